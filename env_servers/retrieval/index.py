"""Build and load retrieval indexes: sparse BM25 (bm25s) or dense (HF encoder + faiss).

An index directory is self-contained — ``meta.json``, ``docs.jsonl`` and the index files — so the
server needs nothing but the directory. Dense encoders mean-pool the last hidden state (as E5, the
encoder of Search-R1's retriever, is trained) and L2-normalise, so inner product is cosine similarity.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from env_servers.retrieval.corpus import LazyCorpus, iter_corpus
from env_servers.retrieval.encoder import DenseEncoder, default_pooling, encoder_prefixes

META_FILE = "meta.json"
DOCS_FILE = "docs.jsonl"
BM25_DIR = "bm25"
FAISS_FILE = "index.faiss"
FAISS_INDEXES = ("flat", "hnsw", "ivf")
HNSW_M = 32
HNSW_EF_SEARCH = 64  # candidates an HNSW search keeps (at least topk)
IVF_NPROBE = 16

SearchResult = list[list[tuple[dict, float]]]


def _stemmer() -> Any:
    """English Snowball stemmer if PyStemmer is installed; bm25s works without one (exact tokens)."""
    try:
        import Stemmer  # type: ignore[import-not-found]
    except ImportError:
        return None
    return Stemmer.Stemmer("english")


def _faiss_gpus_visible(faiss: Any) -> int:
    """GPUs faiss can use: 0 with faiss-cpu (``pip install verl-mem1[gpu]`` brings faiss-gpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def _index_to_gpus(faiss: Any, index: Any, gpus: int) -> Any:
    """``index`` on ``gpus`` GPUs: copied to one, or split across several (``shard``: each GPU holds 1/n of the vectors
    and searches them; faiss merges the top-k), so wiki-18's 64 GB Flat index serves from e.g. four 24 GB GPUs."""
    if gpus == 1:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    return faiss.index_cpu_to_all_gpus(index, co=options, ngpu=gpus)


def _new_faiss_index(faiss: Any, kind: str, dim: int, num_docs: int) -> Any:
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 200
        return index
    if kind == "ivf":
        # ~sqrt(N) lists, but no fewer than faiss' 39 training points per centroid on small corpora.
        nlist = max(1, min(int(math.sqrt(num_docs)), num_docs // 39))
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    try:  # any faiss factory string: "IVF4096,PQ64", "HNSW32,SQ8", "OPQ64,IVF65536,PQ64", ...
        return faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        message = str(exc).splitlines()[-1].split(": ")[-1]
        raise ValueError(f"faiss index {kind!r} does not fit {dim}-d vectors: {message}") from None


def check_faiss_index(kind: str) -> None:
    """Fail early (before any encoding) on a name that is neither a preset nor a faiss factory string."""
    if kind in FAISS_INDEXES:
        return
    import faiss

    try:
        faiss.index_factory(3840, kind, faiss.METRIC_INNER_PRODUCT)  # 3840 = 2^8 * 15: most PQ/SQ sizes divide it
    except RuntimeError as exc:
        if "could not parse" in str(exc):
            raise ValueError(
                f"faiss index {kind!r} is neither one of {', '.join(FAISS_INDEXES)} nor a faiss factory string "
                "(e.g. IVF4096,PQ64 or HNSW32,SQ8)"
            ) from None


def tune_for_search(faiss: Any, index: Any) -> Any:
    """Search-time settings by what the index is (however it was built): IVF probes ``IVF_NPROBE`` lists, HNSW keeps
    ``HNSW_EF_SEARCH`` candidates. The HNSW graph inside (if any) is returned, to widen its search to a larger ``k``."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(IVF_NPROBE, ivf.nlist)
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if not isinstance(inner, faiss.IndexHNSW):
        return None
    inner.hnsw.efSearch = HNSW_EF_SEARCH
    return inner


class _PassageTexts(Sequence[str]):
    """The corpus's passages as the encoder sees them (its passage prefix first), read from disk a slice at a time."""

    def __init__(self, docs: Sequence[dict], prefix: str) -> None:
        self._docs, self._prefix = docs, prefix

    def __len__(self) -> int:
        return len(self._docs)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._prefix + d["contents"] for d in self._docs[i]]
        return self._prefix + self._docs[i]["contents"]


def _copy_corpus(corpus: Path, dest: Path) -> tuple[int, str]:
    """Validate ``corpus`` line by line and write its documents (``id`` and ``contents`` only) to ``dest``.

    Returns:
        The number of documents and a digest of what was written (whether encoded vectors still fit it).
    """
    digest = hashlib.blake2b(digest_size=16)
    tmp = dest.with_name(dest.name + ".tmp")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for doc in iter_corpus(corpus):
                line = json.dumps({"id": doc["id"], "contents": doc["contents"]}, ensure_ascii=False) + "\n"
                f.write(line)
                digest.update(line.encode("utf-8"))
                count += 1
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dest.with_name(dest.name + ".offsets.npy").unlink(missing_ok=True)  # LazyCorpus' line index of the old file
    tmp.replace(dest)
    return count, digest.hexdigest()


def build_index(
    corpus: Path,
    out: Path,
    encoder: str = "bm25",
    *,
    faiss_index: str = "flat",
    batch_size: int = 64,
    max_length: int = 256,
    device: str | None = None,
    show_progress: bool = True,
    shard_size: int = 500_000,
    train_size: int = 200_000,
    keep_vectors: bool = False,
    vectors_from: Path | None = None,
) -> Path:
    """Index ``corpus`` (JSONL ``{id, contents}``) into the directory ``out``; return ``out``.

    Args:
        encoder: ``"bm25"`` or a Hugging Face model name/path (dense, faiss ``faiss_index``).
        shard_size: dense: passages encoded per shard; a rerun resumes after the last finished shard
            (:mod:`env_servers.retrieval.dense_build`).
        train_size: dense: vectors drawn at random to train an index that needs it (IVF, PQ, SQ).
        keep_vectors: dense: keep ``out/vectors/`` after the index is written (another index kind then builds
            without encoding).
        vectors_from: dense: an exact inner-product faiss index over the same corpus in the same order (Search-R1's
            ``e5_Flat.index``) whose vectors are used instead of encoding; ``encoder`` names the model that made
            them (its query prefix and pooling are recorded for serving).
    """
    if min(batch_size, max_length, shard_size, train_size) <= 0:
        raise ValueError("batch_size, max_length, shard_size and train_size must be positive")
    if vectors_from is not None and encoder == "bm25":
        raise ValueError("vectors from a faiss index need the dense encoder that made them (not bm25)")
    if encoder != "bm25":
        check_faiss_index(faiss_index)
    if vectors_from is not None and not Path(vectors_from).is_file():
        raise FileNotFoundError(f"faiss index file not found: {vectors_from}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # meta.json is written last: its presence marks a complete index
    num_docs, corpus_digest = _copy_corpus(Path(corpus), out / DOCS_FILE)
    docs = LazyCorpus(out / DOCS_FILE)
    meta: dict[str, Any] = {"encoder": encoder, "num_docs": num_docs, "max_length": max_length}

    if encoder == "bm25":
        import bm25s

        stemmer = _stemmer()
        texts = [d["contents"] for d in docs]
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=show_progress)
        bm25 = bm25s.BM25()
        bm25.index(tokens, show_progress=show_progress)
        shutil.rmtree(out / BM25_DIR, ignore_errors=True)
        (out / FAISS_FILE).unlink(missing_ok=True)  # a previous dense build into the same directory
        bm25.save(str(out / BM25_DIR), show_progress=show_progress)
        meta.update(kind="bm25", faiss_index=None, stemmer="english" if stemmer is not None else None)
    else:
        import faiss

        from env_servers.retrieval.dense_build import VECTORS_DIR, FlatIndexVectors, encode_in_shards, fill_index

        if Path(encoder).exists():  # a local model: record an absolute path so the index works from any cwd
            encoder = str(Path(encoder).resolve())
            meta["encoder"] = encoder
        pooling = default_pooling(encoder)
        query_prefix, passage_prefix = encoder_prefixes(encoder)
        if vectors_from is not None:
            vectors = FlatIndexVectors(Path(vectors_from))
            if len(vectors) != num_docs:
                raise ValueError(f"{vectors_from} holds {len(vectors):,} vectors but {corpus} {num_docs:,} documents")
            index = _new_faiss_index(faiss, faiss_index, vectors.dim, num_docs)
            meta["vectors_from"] = str(Path(vectors_from).resolve())
        else:
            enc = DenseEncoder(encoder, max_length=max_length, device=device, pooling=pooling)
            index = _new_faiss_index(faiss, faiss_index, enc.dim, num_docs)  # a bad factory string fails first
            vectors = encode_in_shards(
                _PassageTexts(docs, passage_prefix),
                lambda texts, advance: enc.encode(texts, batch_size=batch_size, on_batch=advance),
                out / VECTORS_DIR,
                shard_size=shard_size,
                fingerprint={
                    "encoder": encoder,
                    "max_length": enc.max_length,
                    "pooling": pooling,
                    "passage_prefix": passage_prefix,
                    "corpus_blake2b": corpus_digest,
                },
                show_progress=show_progress,
            )
        on_gpu = "hnsw" not in faiss_index.lower() and _faiss_gpus_visible(faiss) > 0  # faiss has no GPU HNSW
        if on_gpu:
            gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(gpu_resources, 0, index)
        fill_index(index, vectors, train_size=train_size, show_progress=show_progress)
        if on_gpu:
            index = faiss.index_gpu_to_cpu(index)
        faiss.write_index(index, str(out / FAISS_FILE))
        shutil.rmtree(out / BM25_DIR, ignore_errors=True)  # a previous BM25 build into the same directory
        if not keep_vectors:
            shutil.rmtree(out / VECTORS_DIR, ignore_errors=True)
        meta.update(
            kind="dense",
            faiss_index=faiss_index,
            dim=vectors.dim,
            pooling=pooling,
            query_prefix=query_prefix,
            passage_prefix=passage_prefix,
        )

    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


class Retriever(ABC):
    """Top-k search over an index directory's documents; ``search`` takes a whole batch in one call."""

    def __init__(self, docs: Sequence[dict], meta: dict) -> None:
        self.docs = docs
        self.meta = meta

    @property
    def num_docs(self) -> int:
        return len(self.docs)

    @property
    def encoder(self) -> str:
        return str(self.meta["encoder"])

    def search(self, queries: list[str], topk: int) -> SearchResult:
        """Return, per query, up to ``topk`` ``(document, score)`` pairs, best first."""
        if topk <= 0:
            raise ValueError("topk must be positive")
        if not queries:
            return []
        k = min(topk, self.num_docs)
        ids, scores = self._search(queries, k)
        return [
            [(self.docs[int(i)], float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]

    @abstractmethod
    def _search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(doc positions, scores)``, each ``(len(queries), k)``; position -1 means no hit."""


class BM25Retriever(Retriever):
    """bm25s scoring; queries are tokenised exactly as the documents were (stopwords, stemmer)."""

    def __init__(self, docs: Sequence[dict], meta: dict, index_dir: Path) -> None:
        import bm25s

        super().__init__(docs, meta)
        self._bm25s = bm25s
        self._bm25 = bm25s.BM25.load(str(index_dir / BM25_DIR), show_progress=False)
        self._stemmer = _stemmer() if meta.get("stemmer") else None
        if meta.get("stemmer") and self._stemmer is None:
            raise RuntimeError("index was built with a stemmer but PyStemmer is not installed")
        # Only ids with a column in the score matrix: bm25s lists an empty token "" in the vocabulary that
        # has none, so a query of only stopwords/unknown words would crash retrieve(); those score 0 instead.
        num_terms = len(self._bm25.scores["indptr"]) - 1
        self._vocab: dict[str, int] = {t: i for t, i in self._bm25.vocab_dict.items() if t and i < num_terms}
        if self._bm25.scores["num_docs"] != len(docs):
            raise RuntimeError(f"bm25 index has {self._bm25.scores['num_docs']} docs but docs.jsonl {len(docs)}")

    def _search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        tokens = self._bm25s.tokenize(
            queries, stopwords="en", stemmer=self._stemmer, return_ids=False, show_progress=False
        )
        ids = np.empty((len(queries), k), dtype=np.int64)
        scores = np.empty((len(queries), k), dtype=np.float32)
        for row, toks in enumerate(tokens):
            q = [self._vocab[t] for t in toks if t in self._vocab]
            if not q:
                ids[row], scores[row] = np.arange(k), 0.0
                continue
            s = np.asarray(self._bm25.get_scores(q), dtype=np.float32)
            top = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
            top = top[np.lexsort((top, -s[top]))]  # best first, ties by position: deterministic
            ids[row], scores[row] = top, s[top]
        return ids, scores


class DenseRetriever(Retriever):
    """Encodes the query batch once, then one faiss search for the whole batch."""

    def __init__(
        self,
        docs: Sequence[dict],
        meta: dict,
        faiss_file: Path,
        device: str | None = None,
        mmap: bool = False,
        faiss_gpus: int | None = None,
    ) -> None:
        """``faiss_gpus``: GPUs the index is split across (0: searched on the CPU; default: every GPU faiss sees when
        the encoder runs on CUDA). HNSW and memory-mapped indexes stay on the CPU."""
        import faiss

        super().__init__(docs, meta)
        self._encoder = DenseEncoder(
            meta["encoder"],
            max_length=int(meta.get("max_length", 256)),
            device=device,
            pooling=meta.get("pooling", "mean"),
        )
        self._prefix = meta.get("query_prefix", "")
        # mmap: the vectors stay in the file (page cache) instead of memory: an index larger than RAM still serves
        index = faiss.read_index(str(faiss_file), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        if index.ntotal != len(docs):
            raise RuntimeError(f"faiss index has {index.ntotal} vectors but the corpus {len(docs)} documents")
        if index.d != self._encoder.dim:
            raise RuntimeError(f"faiss index holds {index.d}-d vectors but {meta['encoder']} makes {self._encoder.dim}")
        self._hnsw = tune_for_search(faiss, index)
        visible = _faiss_gpus_visible(faiss)
        if faiss_gpus is None:
            faiss_gpus = visible if self._hnsw is None and not mmap and self._encoder.device != "cpu" else 0
        elif faiss_gpus > 0 and (self._hnsw is not None or mmap or faiss_gpus > visible):
            why = (
                "an HNSW index is searched on the CPU"
                if self._hnsw is not None
                else "a memory-mapped index is searched on the CPU"
                if mmap
                else f"faiss sees {visible} GPU(s) (faiss-gpu comes with the gpu extra)"
            )
            raise ValueError(f"faiss_gpus={faiss_gpus}: {why}")
        if faiss_gpus > 0:
            index = _index_to_gpus(faiss, index, faiss_gpus)
        self.faiss_gpus = faiss_gpus
        self._index = index

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self._encoder.encode_packed([self._prefix + q for q in queries])

    def _search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        emb = self.encode_queries(queries)
        if self._hnsw is not None:
            self._hnsw.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
        scores, ids = self._index.search(emb, k)
        return ids, scores


def read_meta(index_dir: Path) -> dict:
    """The index's ``meta.json``; ``FileNotFoundError`` with a clear message if the directory is not an index."""
    index_dir = Path(index_dir)
    path = index_dir / META_FILE
    if not index_dir.is_dir():
        raise FileNotFoundError(f"index directory {index_dir} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{index_dir} is not a retrieval index (no {META_FILE}; run `mem1 index build`)")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("kind") not in ("bm25", "dense"):
        raise ValueError(f"{path}: unknown index kind {meta.get('kind')!r}")
    return meta


def load_retriever(
    index_dir: Path, device: str | None = None, mmap: bool = False, faiss_gpus: int | None = None
) -> Retriever:
    """Load the retriever an index directory was built for (BM25 or dense; ``faiss_gpus``: :class:`DenseRetriever`)."""
    index_dir = Path(index_dir)
    meta = read_meta(index_dir)
    docs = LazyCorpus(index_dir / DOCS_FILE)  # read in place: a 21M-passage corpus is not loaded into Python objects
    if meta["kind"] == "bm25":
        return BM25Retriever(docs, meta, index_dir)
    return DenseRetriever(docs, meta, index_dir / FAISS_FILE, device=device, mmap=mmap, faiss_gpus=faiss_gpus)


def load_search_r1_retriever(
    faiss_file: Path,
    corpus: Path,
    encoder: str,
    *,
    pooling: str | None = None,
    max_length: int = 256,
    device: str | None = None,
    mmap: bool = False,
    faiss_gpus: int | None = None,
) -> Retriever:
    """Serve Search-R1's own artifacts as they are: its faiss index (e.g. ``e5_Flat.index``) over its corpus JSONL
    (``wiki-18.jsonl``, read in place: :class:`LazyCorpus`), queries encoded as Search-R1 encodes them: the
    family's prefix (E5 ``query: ``, BGE its instruction), ``pooling`` (default by family: E5 mean, BGE [CLS]),
    L2-normalised, at most ``max_length`` tokens (Search-R1's 256)."""

    faiss_file, corpus = Path(faiss_file), Path(corpus)
    if not faiss_file.is_file():
        raise FileNotFoundError(f"faiss index file not found: {faiss_file}")
    meta = {
        "kind": "dense",
        "encoder": encoder,
        "max_length": max_length,
        "pooling": pooling or default_pooling(encoder),
        "query_prefix": encoder_prefixes(encoder)[0],
        "source": {"faiss_index": str(faiss_file), "corpus": str(corpus)},
    }
    return DenseRetriever(LazyCorpus(corpus), meta, faiss_file, device=device, mmap=mmap, faiss_gpus=faiss_gpus)
