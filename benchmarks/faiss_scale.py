"""Dense indexes at wiki-18 scale on one machine: compressed and memory-mapped faiss indexes over millions of vectors.

Search-R1's wiki-18 index is 21M x 768 fp32 vectors in a Flat index: ~64 GB, more than a 24 GB machine. Without
those vectors here, ``--sizes`` random-but-clustered 768-d unit vectors stand in (points around 2,000 Gaussian
centres, as passages cluster by topic), written once per size as a ``.npy`` file under ``--data`` and read through a
memory map, so no step holds them all in memory. For each size and each ``--kinds`` (a faiss factory string, or
``Flat-mmap``: the exact index served memory-mapped, as ``mem1 serve retrieval --mmap`` does) it measures: build time
(training on ``--train`` vectors, then adding in chunks of 100k with a progress bar), the index file's size, the
serving process's memory after loading (its own ``VmRSS`` delta; a memory-mapped index counts only the pages the
searches touched), single-query search latency p50/p99 with ``--clients`` threads searching at once (the index
alone; encoding is measured by ``retrieval_load.py``), and recall@10 against exact search for ``--queries`` queries
(ground truth computed in chunks over the memory-mapped vectors).

    .venv/bin/python benchmarks/faiss_scale.py --sizes 2000000 --kinds 'IVF1024,PQ64' 'HNSW32,SQ8' Flat-mmap
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from env_servers.retrieval.index import tune_for_search  # noqa: E402

DIM = 768
CHUNK = 100_000


def vectors_file(n: int, data: Path, seed: int = 0) -> Path:
    """``n`` unit vectors around 2,000 centres, written once in chunks."""
    from tqdm import tqdm

    path = data / f"vectors_{n}.npy"
    if path.is_file():
        return path
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32, shape=(n, DIM))
    for start in tqdm(range(0, n, CHUNK), desc=f"writing {n:,} vectors", unit="chunk"):
        size = min(CHUNK, n - start)
        noise = rng.standard_normal((size, DIM)).astype(np.float32) * (0.8 / DIM**0.5)  # norm ~0.8 around a unit centre
        x = centres[rng.integers(0, len(centres), size)] + noise
        out[start : start + size] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out
    path.with_suffix(".tmp.npy").rename(path)
    return path


def queries(vectors: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    """Perturbed corpus vectors: a query near, not on, its passage."""
    rng = np.random.default_rng(seed)
    picked = vectors[np.sort(rng.choice(len(vectors), count, replace=False))]
    q = picked + rng.standard_normal((count, DIM)) * (0.3 / DIM**0.5)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact_top10(vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    best_scores = np.full((len(q), 10), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(q), 10), dtype=np.int64)
    for start in range(0, len(vectors), CHUNK):
        scores = q @ np.asarray(vectors[start : start + CHUNK]).T
        ids = np.argpartition(-scores, 9, axis=1)[:, :10]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, ids, 1)], axis=1)
        merged_ids = np.concatenate([best_ids, ids + start], axis=1)
        keep = np.argsort(-merged_scores, axis=1)[:, :10]
        best_scores, best_ids = np.take_along_axis(merged_scores, keep, 1), np.take_along_axis(merged_ids, keep, 1)
    return best_ids


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(kind: str, vectors: np.ndarray, out: Path, train: int) -> tuple[Path, float]:
    import faiss
    from tqdm import tqdm

    path = out / f"{kind.replace(',', '_')}_{len(vectors)}.index"
    if path.is_file():
        return path, float("nan")
    start = time.perf_counter()
    index = faiss.index_factory(DIM, "Flat" if kind == "Flat-mmap" else kind, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        sample = np.sort(np.random.default_rng(2).choice(len(vectors), min(train, len(vectors)), replace=False))
        index.train(np.asarray(vectors[sample]))
    for s in tqdm(range(0, len(vectors), CHUNK), desc=f"adding to {kind}", unit="chunk"):
        index.add(np.asarray(vectors[s : s + CHUNK]))
    faiss.write_index(index, str(path))
    return path, time.perf_counter() - start


def measure(kind: str, path: Path, q: np.ndarray, truth: np.ndarray, clients: int) -> dict:
    import faiss

    before = rss_mb()
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_MMAP_IFC if kind == "Flat-mmap" else 0
    index = faiss.read_index(str(path), flags)
    tune_for_search(faiss, index)  # the server's search settings (IVF probes, HNSW candidates)
    loaded = rss_mb() - before
    faiss.omp_set_num_threads(1)  # one search per client thread, as the server's batch does on its own

    def one(i: int) -> float:
        t = time.perf_counter()
        index.search(q[i : i + 1], 10)
        return (time.perf_counter() - t) * 1000

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(min(len(q), clients))))  # warm-up
        start = time.perf_counter()
        latencies = sorted(pool.map(one, range(len(q))))
        seconds = time.perf_counter() - start
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    _, ids = index.search(q, 10)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)]))
    return {
        "loaded_mb": loaded,
        "after_search_mb": rss_mb() - before,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "searches_per_s": len(q) / seconds,
        "recall_at_10": recall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000_000])
    parser.add_argument("--kinds", nargs="+", default=["IVF1024,PQ64", "HNSW32,SQ8", "Flat-mmap"])
    parser.add_argument("--train", type=int, default=100_000, help="vectors to train on (IVF, PQ, SQ)")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--flat-queries", type=int, default=64, help="queries timed on Flat (each scans every vector)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--data", type=Path, default=REPO / "outputs" / "faiss_scale")
    args = parser.parse_args()

    rows = []
    for n in args.sizes:
        vectors = np.load(vectors_file(n, args.data), mmap_mode="r")
        q = queries(vectors, args.queries)
        start = time.perf_counter()
        truth = exact_top10(vectors, q)
        print(f"{n:,} vectors: exact top-10 of {len(q)} queries in {time.perf_counter() - start:.0f} s", flush=True)
        for kind in args.kinds:
            path, build_s = build(kind, vectors, args.data, args.train)
            row = {"size": n, "kind": kind, "build_s": build_s, "file_mb": path.stat().st_size / 2**20}
            count = args.flat_queries if kind.startswith("Flat") else len(q)
            row |= measure(kind, path, q[:count], truth[:count], args.clients)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{os.cpu_count()} cores, {args.clients} client threads, single-query searches, top-10")
    print("| vectors | index | build | file | memory loaded | after searches | p50 | p99 | searches/s | recall@10 |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['size']:,} | {r['kind']} | {r['build_s']:.0f} s | {r['file_mb']:,.0f} MB | "
            f"{r['loaded_mb']:,.0f} MB | {r['after_search_mb']:,.0f} MB | "
            f"{r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | "
            f"{r['searches_per_s']:.0f} | {r['recall_at_10']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
