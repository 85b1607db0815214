"""Load test of the retrieval server: N concurrent clients on loopback against BM25 over HotpotQA.

Rollouts hit the retrieval server from many agents at once, so what matters is throughput and tail
latency under concurrency, and that nothing fails. The server runs in its own process (as in
deployment; a client in the same process would compete for the GIL) and the client is one asyncio
process with ``--clients`` workers sharing one connection pool (aiohttp by default, httpx optionally).
Every run is bounded both in request count and in wall time.

    .venv/bin/python benchmarks/retrieval_load.py --requests 2000 --clients 32 --batch-sizes 1 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtest import http_session, start_server  # noqa: E402

from env_servers.background import free_port  # noqa: E402
from env_servers.retrieval.corpus import build_hotpotqa_corpus, default_hotpotqa_sources  # noqa: E402
from env_servers.retrieval.index import build_index  # noqa: E402


@dataclass
class RunResult:
    client: str
    clients: int
    batch: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _questions() -> list[str]:
    out = []
    for path in default_hotpotqa_sources():
        with open(path, encoding="utf-8") as f:
            out.extend(json.loads(line)["question"] for line in f if line.strip())
    return out


def ensure_index(workdir: Path) -> Path:
    """Build the HotpotQA corpus and BM25 index under ``workdir``, or reuse them if already there."""
    index = workdir / "index"
    if not (index / "meta.json").is_file():
        build_hotpotqa_corpus(None, workdir / "corpus.jsonl")
        build_index(workdir / "corpus.jsonl", index, "bm25", show_progress=False)
    return index


async def run_load(
    url: str,
    questions: list[str],
    *,
    clients: int,
    requests: int,
    batch: int,
    topk: int,
    max_seconds: float,
    client: str = "aiohttp",
) -> RunResult:
    """``clients`` workers take request numbers from a shared counter until ``requests`` are sent or time is up."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    session, call = http_session(client, url, clients)
    async with session:
        start = time.perf_counter()
        deadline = start + max_seconds

        async def worker() -> None:
            nonlocal issued, errors
            while issued < requests and time.perf_counter() < deadline:
                n = issued
                issued += 1
                queries = [questions[(n * batch + j) % len(questions)] for j in range(batch)]
                body = {"queries": queries, "topk": topk, "return_scores": True}
                t0 = time.perf_counter()
                try:
                    status, data = await call("POST", "/retrieve", body)
                    ok = status == 200 and len(data["result"]) == batch
                except Exception:  # noqa: BLE001 - any failure (connection, timeout, bad body) is an error
                    ok = False
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += not ok

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(clients))), timeout=max_seconds + 60)
        seconds = time.perf_counter() - start
    return RunResult(client, clients, batch, len(latencies), errors, seconds, latencies)


def format_table(results: list[RunResult]) -> str:
    lines = [
        "| client | clients | queries/request | requests | errors | throughput (req/s) | queries/s "
        "| p50 (ms) | p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.client} | {r.clients} | {r.batch} | {r.requests} | {r.errors} | {r.throughput:.0f} | "
            f"{r.throughput * r.batch:.0f} | {r.percentile(50):.1f} | {r.percentile(99):.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per batch size (default 2000)")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 8], help="queries per request, one run each (default 1 8)"
    )
    parser.add_argument("--topk", type=int, default=3, help="documents per query (default 3)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="time limit per run (default 120)")
    parser.add_argument(
        "--client",
        choices=("aiohttp", "httpx"),
        nargs="+",
        default=["aiohttp"],
        help="HTTP client library(ies) to load with, one run each (default aiohttp)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where to build/reuse the index (default: temp)")
    args = parser.parse_args(argv)
    if args.clients <= 0 or args.requests <= 0 or args.max_seconds <= 0:
        parser.error("--clients, --requests and --max-seconds must be positive")

    with tempfile.TemporaryDirectory(prefix="retrieval-load-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        index = ensure_index(workdir)
        print(f"index: {index} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        port = free_port()
        proc = start_server(["retrieval", "--index", str(index)], port)
        try:
            url = f"http://127.0.0.1:{port}"
            questions = _questions()
            results = []
            for client in args.client:
                for batch in args.batch_sizes:
                    common = dict(clients=args.clients, batch=batch, topk=args.topk, client=client)
                    asyncio.run(run_load(url, questions, requests=args.clients, max_seconds=30, **common))  # warm-up
                    run = run_load(url, questions, requests=args.requests, max_seconds=args.max_seconds, **common)
                    results.append(asyncio.run(run))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(format_table(results))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
