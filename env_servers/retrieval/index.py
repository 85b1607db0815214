"""Build and load retrieval indexes: sparse BM25 (bm25s) or dense (HF encoder + faiss).

An index directory is self-contained — ``meta.json``, ``docs.jsonl`` and the index files — so the
server needs nothing but the directory. Dense encoders mean-pool the last hidden state (as E5, the
encoder of Search-R1's retriever, is trained) and L2-normalise, so inner product is cosine similarity.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from env_servers.retrieval.corpus import LazyCorpus, read_corpus

META_FILE = "meta.json"
DOCS_FILE = "docs.jsonl"
BM25_DIR = "bm25"
FAISS_FILE = "index.faiss"
FAISS_INDEXES = ("flat", "hnsw", "ivf")
HNSW_M = 32
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

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts`` in batches (longest first, so padding is small); returns ``(len(texts), dim)``."""
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
        return out

    def encode_packed(self, texts: Sequence[str], *, max_tokens: int = 512) -> np.ndarray:
        """Embed short texts (queries) without padding: packed into sequences of at most ``max_tokens`` tokens,
        each text attending only to itself with its positions from 0, so each embedding is the one it has alone
        (within float rounding) at the cost of the real tokens only. BERT-family encoders (E5, BGE, MiniLM) only;
        others (decoder models, RoBERTa's shifted positions) are encoded padded, 16 at a time."""
        if self.model.config.model_type not in PACKABLE_MODEL_TYPES:
            return self.encode(texts, batch_size=16)
        torch = self._torch
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        start = 0
        while start < len(ids):
            stop, tokens = start, 0
            while stop < len(ids) and (stop == start or tokens + len(ids[stop]) <= max_tokens):
                tokens += len(ids[stop])
                stop += 1
            lengths = torch.tensor([len(x) for x in ids[start:stop]])
            flat = torch.tensor([t for x in ids[start:stop] for t in x], device=self.device).unsqueeze(0)
            positions = torch.cat([torch.arange(int(n)) for n in lengths]).unsqueeze(0).to(self.device)
            segment = torch.repeat_interleave(torch.arange(len(lengths)), lengths).to(self.device)
            mask = (segment[:, None] == segment[None, :])[None, None]  # (1, 1, T, T): each text sees itself
            with torch.inference_mode():
                hidden = self.model(input_ids=flat, position_ids=positions, attention_mask=mask).last_hidden_state[0]
            if self.pooling == "cls":  # each text's first token
                pooled = hidden[(torch.cumsum(lengths, 0) - lengths).to(self.device)].float()
            else:
                sums = torch.zeros(len(lengths), hidden.shape[-1], device=self.device).index_add_(0, segment, hidden)
                pooled = sums.float() / lengths.to(self.device)[:, None]
            out[start:stop] = torch.nn.functional.normalize(pooled, p=2, dim=-1).cpu().numpy()
            start = stop
        return out


def _faiss_gpu_ok(faiss: Any) -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


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


def _tune_for_search(faiss: Any, index: Any) -> Any:
    """Search-time settings by what the index is (however it was built): IVF probes ``IVF_NPROBE`` lists; the HNSW
    graph inside (if any) is returned, to widen its search to ``k``."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(IVF_NPROBE, ivf.nlist)
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return inner if isinstance(inner, faiss.IndexHNSW) else None


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
) -> Path:
    """Index ``corpus`` (JSONL ``{id, contents}``) into the directory ``out``; return ``out``.

    ``encoder`` is ``"bm25"`` or a Hugging Face model name/path (dense, faiss ``faiss_index``).
    """
    if batch_size <= 0 or max_length <= 0:
        raise ValueError("batch_size and max_length must be positive")
    if encoder != "bm25":
        check_faiss_index(faiss_index)
    docs = [{"id": d["id"], "contents": d["contents"]} for d in read_corpus(Path(corpus))]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # meta.json is written last: its presence marks a complete index
    texts = [d["contents"] for d in docs]
    meta: dict[str, Any] = {"encoder": encoder, "num_docs": len(docs), "max_length": max_length}

    if encoder == "bm25":
        import bm25s

        stemmer = _stemmer()
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=show_progress)
        bm25 = bm25s.BM25()
        bm25.index(tokens, show_progress=show_progress)
        shutil.rmtree(out / BM25_DIR, ignore_errors=True)
        (out / FAISS_FILE).unlink(missing_ok=True)  # a previous dense build into the same directory
        bm25.save(str(out / BM25_DIR), show_progress=show_progress)
        meta.update(kind="bm25", faiss_index=None, stemmer="english" if stemmer is not None else None)
    else:
        import faiss

        if Path(encoder).exists():  # a local model: record an absolute path so the index works from any cwd
            encoder = str(Path(encoder).resolve())
            meta["encoder"] = encoder
        pooling = default_pooling(encoder)
        enc = DenseEncoder(encoder, max_length=max_length, device=device, pooling=pooling)
        index = _new_faiss_index(faiss, faiss_index, enc.dim, len(docs))  # a bad factory string fails before encoding
        query_prefix, passage_prefix = _prefixes(encoder)
        emb = enc.encode([passage_prefix + t for t in texts], batch_size=batch_size, show_progress=show_progress)
        on_gpu = "hnsw" not in faiss_index.lower() and _faiss_gpu_ok(faiss)  # faiss has no GPU HNSW
        if on_gpu:
            gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(gpu_resources, 0, index)
        if not index.is_trained:  # IVF centroids, PQ/SQ codebooks
            index.train(emb)
        index.add(emb)
        if on_gpu:
            index = faiss.index_gpu_to_cpu(index)
        faiss.write_index(index, str(out / FAISS_FILE))
        shutil.rmtree(out / BM25_DIR, ignore_errors=True)  # a previous BM25 build into the same directory
        meta.update(
            kind="dense",
            faiss_index=faiss_index,
            dim=int(emb.shape[1]),
            pooling=pooling,
            query_prefix=query_prefix,
            passage_prefix=passage_prefix,
        )

    with open(out / DOCS_FILE, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


class Retriever(ABC):
    """Top-k search over an index directory's documents; ``search`` takes a whole batch in one call."""

    def __init__(self, docs: list[dict], meta: dict) -> None:
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

    def __init__(self, docs: list[dict], meta: dict, index_dir: Path) -> None:
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
        self, docs: Sequence[dict], meta: dict, faiss_file: Path, device: str | None = None, mmap: bool = False
    ) -> None:
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
        self._hnsw = _tune_for_search(faiss, index)
        if self._hnsw is None and not mmap and _faiss_gpu_ok(faiss) and self._encoder.device != "cpu":
            self._gpu_res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
        self._index = index

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self._encoder.encode_packed([self._prefix + q for q in queries])

    def _search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        emb = self.encode_queries(queries)
        if self._hnsw is not None:
            self._hnsw.hnsw.efSearch = max(64, k)
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


def load_retriever(index_dir: Path, device: str | None = None, mmap: bool = False) -> Retriever:
    """Load the retriever an index directory was built for (BM25 or dense)."""
    index_dir = Path(index_dir)
    meta = read_meta(index_dir)
    docs = read_corpus(index_dir / DOCS_FILE)
    if meta["kind"] == "bm25":
        return BM25Retriever(docs, meta, index_dir)
    return DenseRetriever(docs, meta, index_dir / FAISS_FILE, device=device, mmap=mmap)


def load_search_r1_retriever(
    faiss_file: Path,
    corpus: Path,
    encoder: str,
    *,
    pooling: str | None = None,
    max_length: int = 256,
    device: str | None = None,
    mmap: bool = False,
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
    return DenseRetriever(LazyCorpus(corpus), meta, faiss_file, device=device, mmap=mmap)
