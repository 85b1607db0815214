"""Dense index builds at wiki-18 scale: passages encoded in resumable shards, or vectors taken from an exact faiss index
that already exists (Search-R1's ``e5_Flat.index``), then a faiss index trained on a sample and filled chunk by chunk.

Encoding wiki-18 (21M passages) takes hours even on a GPU, so passages are encoded ``shard_size`` at a time and each
finished shard is written to ``vectors/shard_NNNNN.npy`` (a temporary name, then renamed: a killed build leaves no
half shard). A rerun of the same build (``vectors/manifest.json``: the same corpus bytes, encoder, pooling, prefix,
lengths and shard size) skips the finished shards. Vectors are read back through memory maps, so no step holds them
all in memory; they are deleted once the index is written unless kept (``keep_vectors``), and a kept set builds
another index kind without encoding again.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

VECTORS_DIR = "vectors"
MANIFEST_FILE = "manifest.json"
ADD_CHUNK = 100_000  # vectors handed to faiss per add(): bounded memory, a progress bar that moves


class VectorSource(Protocol):
    """Row-addressable float32 vectors, read a slice at a time."""

    dim: int

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a ``(stop - start, dim)`` float32 array."""
        ...

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (sorted) as a ``(len(rows), dim)`` float32 array."""
        ...


class ShardedVectors:
    """Shard files (``.npy``, one ``(rows, dim)`` array each) seen as one array, memory-mapped."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._shards = [np.load(p, mmap_mode="r") for p in paths]
        if not self._shards:
            raise ValueError("no vector shards")
        self.dim = int(self._shards[0].shape[1])
        self._starts = np.cumsum([0] + [len(s) for s in self._shards])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        parts = []
        for shard, first in zip(self._shards, self._starts[:-1], strict=True):
            lo, hi = max(start - first, 0), min(stop - first, len(shard))
            if lo < hi:
                parts.append(np.asarray(shard[lo:hi], dtype=np.float32))
        return np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        which = np.searchsorted(self._starts, rows, side="right") - 1
        return np.stack([self._shards[s][r - self._starts[s]] for s, r in zip(which, rows, strict=True)]).astype(
            np.float32, copy=False
        )


class FlatIndexVectors:
    """The vectors stored in an exact inner-product faiss index file (Search-R1's ``e5_Flat.index``), memory-mapped:
    a 64 GB index is read a chunk at a time, never whole."""

    def __init__(self, path: Path) -> None:
        import faiss

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"faiss index file not found: {path}")
        self._owner = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_MMAP_IFC)
        index = faiss.downcast_index(self._owner)  # a view: the object read_index returned owns the index
        if not isinstance(index, faiss.IndexFlat):
            raise ValueError(
                f"{path} is a {type(index).__name__}, not an exact (Flat) index: its vectors are not stored as they are"
            )
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{path}: the index ranks by L2 distance; the server ranks by inner product")
        self._index = index
        self.dim = int(index.d)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._index.reconstruct_n(start, stop - start)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(np.asarray(rows, dtype=np.int64))


def encode_in_shards(
    texts: Sequence[str],
    encode: Callable[[Sequence[str], Callable[[int], None]], np.ndarray],
    out: Path,
    *,
    shard_size: int,
    fingerprint: dict[str, Any],
    show_progress: bool = True,
) -> ShardedVectors:
    """Encode ``texts`` ``shard_size`` at a time into ``out/shard_NNNNN.npy``, skipping shards a previous run of the
    same build (same ``fingerprint`` and shard size) finished.

    Args:
        texts: the passages as the encoder sees them (prefix included); read a shard at a time.
        encode: ``encode(texts, advance)``: a ``(len(texts), dim)`` float32 array; ``advance(n)`` after each batch.
        out: the vectors directory.
        fingerprint: what makes vectors reusable (encoder, pooling, corpus digest, ...); recorded in the manifest.
    Returns:
        The vectors, in ``texts`` order.
    """
    from tqdm.auto import tqdm

    if shard_size <= 0:
        raise ValueError("shard_size must be positive")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {**fingerprint, "num_texts": len(texts), "shard_size": shard_size}
    manifest_file = out / MANIFEST_FILE
    old = json.loads(manifest_file.read_text(encoding="utf-8")) if manifest_file.is_file() else manifest
    if old != manifest:
        changed = sorted(k for k in manifest.keys() | old.keys() if manifest.get(k) != old.get(k))
        print(f"{out}: vectors of a different build (differs in {', '.join(changed)}): encoding again", flush=True)
        shutil.rmtree(out)
        out.mkdir(parents=True)
    manifest_file.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    num_shards = math.ceil(len(texts) / shard_size)
    paths = [out / f"shard_{i:05d}.npy" for i in range(num_shards)]

    def finished(i: int) -> bool:
        if not paths[i].is_file():
            return False
        rows = min(shard_size, len(texts) - i * shard_size)
        try:
            return np.load(paths[i], mmap_mode="r").shape[0] == rows
        except ValueError:  # not an .npy file (cannot happen through this function's own writes)
            return False

    todo = [i for i in range(num_shards) if not finished(i)]
    done_texts = len(texts) - sum(min(shard_size, len(texts) - i * shard_size) for i in todo)
    if done_texts and show_progress:
        print(f"resuming: {num_shards - len(todo)} of {num_shards} shards already encoded", flush=True)
    with tqdm(total=len(texts), initial=done_texts, desc="encoding", unit="passage", disable=not show_progress) as bar:
        for i in todo:
            vectors = encode(texts[i * shard_size : (i + 1) * shard_size], bar.update)
            tmp = paths[i].with_name(paths[i].stem + ".tmp.npy")
            np.save(tmp, vectors)
            tmp.replace(paths[i])
    return ShardedVectors(paths)


def fill_index(index: Any, vectors: VectorSource, *, train_size: int, show_progress: bool = True, seed: int = 0) -> Any:
    """Train ``index`` (if it needs training: IVF centroids, PQ/SQ codebooks) on ``train_size`` vectors drawn at
    random, then add all vectors in order, ``ADD_CHUNK`` at a time. Returns ``index``."""
    from tqdm.auto import tqdm

    if not index.is_trained:
        count = min(train_size, len(vectors))
        rows = np.sort(np.random.default_rng(seed).choice(len(vectors), count, replace=False))
        if show_progress:
            print(f"training the index on {count:,} of {len(vectors):,} vectors", flush=True)
        index.train(vectors.take(rows))
    starts = range(0, len(vectors), ADD_CHUNK)
    with tqdm(total=len(vectors), desc="adding", unit="vector", disable=not show_progress) as bar:
        for start in starts:
            chunk = vectors.read(start, min(start + ADD_CHUNK, len(vectors)))
            index.add(chunk)
            bar.update(len(chunk))
    return index
