"""Product search: BM25 over WebShop's product text, as WebShop ranks it (Lucene BM25 through Pyserini).

bm25s with Lucene's scoring, Pyserini's parameters (k1 = 0.9, b = 0.4), English stop words and the Snowball
English stemmer stand in for the Java Lucene index; nothing to download, no JVM.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable
from functools import lru_cache

import bm25s
import Stemmer
from bm25s.tokenization import Tokenized, Tokenizer
from tqdm import tqdm

from env_servers.webshop.data import product_search_text

SEARCH_RETURN_N = 50  # WebShop returns the top 50 products of a search


class ProductSearch:
    """``search(keywords) -> [asin, ...]``, best first, at most ``SEARCH_RETURN_N``.

    Products are read once, in chunks, so the index of WebShop's full 1.18M products never holds all their texts.
    """

    def __init__(
        self, products: Iterable[dict], *, top_n: int = SEARCH_RETURN_N, cache_size: int = 4096, chunk: int = 20_000
    ):
        self._stemmer = Stemmer.Stemmer("english")
        tokenizer = Tokenizer(stopwords="en", stemmer=self._stemmer.stemWord)
        self.asins: list[str] = []
        ids: list[list[int]] = []
        stream = iter(tqdm(products, desc="search index", unit=" products", disable=None))
        while batch := list(itertools.islice(stream, chunk)):
            self.asins += [p["asin"] for p in batch]
            texts = [product_search_text(p) for p in batch]
            ids += tokenizer.tokenize(texts, update_vocab=True, return_as="ids", show_progress=False)
        self.top_n = min(top_n, len(self.asins))
        self._vocab = tokenizer.get_vocab_dict()
        self._bm25 = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
        self._bm25.index(Tokenized(ids=ids, vocab=self._vocab), show_progress=False)
        self._lock = threading.Lock()  # bm25s keeps per-call state; one search at a time
        self.search = lru_cache(maxsize=cache_size)(self._search)  # agents repeat searches a lot

    def _search(self, keywords: str) -> tuple[str, ...]:
        words = bm25s.tokenize(
            [keywords], stopwords="en", stemmer=self._stemmer, return_ids=False, show_progress=False
        )[0]
        known = [w for w in words if w in self._vocab and w]
        if not known:  # only stop words or words no product has: nothing matches
            return ()
        with self._lock:
            docs, scores = self._bm25.retrieve([known], k=self.top_n, show_progress=False, n_threads=1)
        return tuple(self.asins[int(d)] for d, s in zip(docs[0], scores[0], strict=True) if s > 0)
