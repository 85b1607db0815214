"""Build and load retrieval indexes: sparse BM25 (bm25s) or dense (HF encoder + faiss).

An index directory is self-contained — ``meta.json``, ``docs.jsonl`` and the index files — so the
server needs nothing but the directory. Dense encoders mean-pool the last hidden state (as E5, the
encoder of Search-R1's retriever, is trained) and L2-normalise, so inner product is cosine similarity.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import math
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from env_servers.retrieval.corpus import LazyCorpus, iter_corpus

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


BGE_QUERY_PREFIX = "Represent this sentence for searching relevant passages: "
POOLINGS = ("mean", "cls")


def _prefixes(encoder: str) -> tuple[str, str]:
    """Query/passage prefixes the encoder family was trained with, as Search-R1 adds them (by the model's name):
    E5 ``query: `` / ``passage: ``, BGE an instruction before queries only."""
    name = Path(encoder).name.lower()
    if "e5" in name:
        return "query: ", "passage: "
    if "bge" in name:
        return BGE_QUERY_PREFIX, ""
    return "", ""


def default_pooling(encoder: str) -> str:
    """How the family pools its last hidden state: BGE its [CLS] token, E5 and others the mean over tokens."""
    return "cls" if "bge" in Path(encoder).name.lower() else "mean"


def _resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


@functools.lru_cache(maxsize=2)
def _load_hf_encoder(name_or_path: str, device: str) -> tuple[Any, Any]:
    """Tokenizer and model, cached: building an index and then serving it in one process (tests, notebooks)
    should not load a large-vocabulary tokenizer twice. Both are only read from afterwards."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:  # decoder-only checkpoints often ship without one
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model = AutoModel.from_pretrained(name_or_path, dtype=torch.float32).to(device).eval()
    return tokenizer, model


# encoders whose positions start at 0 for every text and that take a (batch, 1, T, T) attention mask: packable
PACKABLE_MODEL_TYPES = ("bert",)
PACKED_ROW_TOKENS = 128  # tokens per packed row of queries (a few questions each): see DenseEncoder.encode_packed


class DenseEncoder:
    """A Hugging Face encoder producing pooled (mean or [CLS]), L2-normalised fp32 embeddings."""

    def __init__(
        self, name_or_path: str, *, max_length: int = 256, device: str | None = None, pooling: str = "mean"
    ) -> None:
        import torch

        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; one of {', '.join(POOLINGS)}")
        self.device = _resolve_device(device)
        self.max_length = max_length
        self.pooling = pooling
        self.tokenizer, self.model = _load_hf_encoder(name_or_path, self.device)
        if self.model.config.model_type in PACKABLE_MODEL_TYPES:  # BERT cannot see past its position table
            self.max_length = min(max_length, self.model.config.max_position_embeddings)
        self._torch = torch

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        show_progress: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` in batches (longest first, so padding is small); returns ``(len(texts), dim)``.
        ``on_batch(n)`` is called after each batch of ``n`` texts (an outer progress bar)."""
        from tqdm.auto import tqdm

        torch = self._torch
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="encoding", unit="batch", disable=not show_progress):
            idx = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)
            out[idx] = pooled.cpu().numpy()
            if on_batch is not None:
                on_batch(len(idx))
        return out

    def encode_packed(self, texts: Sequence[str], *, max_tokens: int = PACKED_ROW_TOKENS) -> np.ndarray:
        """Embed short texts (queries) with almost no padding: packed end to end into rows of about ``max_tokens``
        tokens (as many rows as the tokens need, balanced), all rows in one forward pass, each text attending only to
        itself with its positions from 0, so each embedding is the one it has alone (within float rounding) at the
        cost of the real tokens only. Short rows keep attention's cost down: it grows with the square of a row's
        length. BERT-family encoders (E5, BGE, MiniLM) only; others (decoder models, RoBERTa's shifted positions)
        are encoded padded, 16 at a time.

        Returns:
            ``(len(texts), dim)`` float32, L2-normalised.
        """
        if self.model.config.model_type not in PACKABLE_MODEL_TYPES:
            return self.encode(texts, batch_size=16)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        torch = self._torch
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        # As few rows as the tokens need, balanced (longest text first into the emptiest row), so that padding every
        # row to the longest one wastes little.
        num_rows = math.ceil(sum(map(len, ids)) / max_tokens)
        rows: list[list[int]] = [[] for _ in range(num_rows)]
        fill = [(0, r) for r in range(num_rows)]  # a heap of (tokens, row)
        for i in sorted(range(len(ids)), key=lambda i: -len(ids[i])):
            used, r = heapq.heappop(fill)
            rows[r].append(i)
            heapq.heappush(fill, (used + len(ids[i]), r))
        width = max(used for used, _ in fill)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        positions = torch.zeros(len(rows), width, dtype=torch.long)
        owner = -1 - torch.arange(width).repeat(len(rows), 1)  # the text each token belongs to; padding: itself
        first = torch.empty(len(texts), dtype=torch.long)  # where each text starts in the flattened rows
        for r, row in enumerate(rows):
            column = 0
            for i in row:
                n = len(ids[i])
                input_ids[r, column : column + n] = torch.tensor(ids[i])
                positions[r, column : column + n] = torch.arange(n)
                owner[r, column : column + n] = i
                first[i] = r * width + column
                column += n
        mask = (owner[:, :, None] == owner[:, None, :])[:, None]  # (rows, 1, width, width): each text sees itself
        with torch.inference_mode():
            hidden = self.model(
                input_ids=input_ids.to(self.device),
                position_ids=positions.to(self.device),
                attention_mask=mask.to(self.device),
            ).last_hidden_state.flatten(0, 1)  # (rows * width, hidden)
        if self.pooling == "cls":  # each text's first token
            pooled = hidden[first.to(self.device)].float()
        else:
            owner = owner.flatten().to(self.device)
            real = owner >= 0
            sums = torch.zeros(len(texts), hidden.shape[-1], device=self.device, dtype=hidden.dtype)
            sums.index_add_(0, owner[real], hidden[real])
            lengths = torch.tensor([len(x) for x in ids], dtype=torch.float32, device=self.device)
            pooled = sums.float() / lengths[:, None]
        return torch.nn.functional.normalize(pooled, p=2, dim=-1).cpu().numpy()


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
        query_prefix, passage_prefix = _prefixes(encoder)
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
        "query_prefix": _prefixes(encoder)[0],
        "source": {"faiss_index": str(faiss_file), "corpus": str(corpus)},
    }
    return DenseRetriever(LazyCorpus(corpus), meta, faiss_file, device=device, mmap=mmap, faiss_gpus=faiss_gpus)
