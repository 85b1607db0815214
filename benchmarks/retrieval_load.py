"""Load test of the retrieval server: N concurrent clients on loopback against an index over HotpotQA.

Rollouts hit the retrieval server from many agents at once, so what matters is throughput and tail
latency under concurrency, and that nothing fails. The server runs in its own process (as in
deployment; a client in the same process would compete for the GIL) and the client is one asyncio
process with ``--clients`` workers sharing one connection pool (aiohttp by default, httpx optionally).
Every run is bounded both in request count and in wall time.

``--encoder bm25`` (default) serves BM25; ``--encoder minilm`` a dense Flat index encoded by a random BERT of
all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads, FFN 1536; real weights need a download, and the compute is
the shape's), or give a Hugging Face encoder folder. ``--modes batched per-request`` measures, in the same run, the
server batching queries across concurrent requests (the default) and the same server searching each request alone
(``--max-batch-queries 0``); ``--baseline DIR`` adds the server of another checkout (``before``, e.g. the project
before batching: ``git worktree add /tmp/before d0715b4``). It prints each one's ratio to the per-request server(s),
and before the load checks that all return the same documents (scores within 1e-5) for the first 300 questions.
``--variant NAME=FLAGS`` adds the server started with other flags (e.g. ``'window5=--batch-window-ms 5'``).

    .venv/bin/python benchmarks/retrieval_load.py --requests 2000 --clients 32 --batch-sizes 1 8
    .venv/bin/python benchmarks/retrieval_load.py --encoder minilm --modes batched per-request --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
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


def minilm_shaped_encoder(out: Path) -> Path:
    """A random BERT with all-MiniLM-L6-v2's shape and the bundled Qwen2.5 tokenizer, written once to ``out``."""
    if (out / "config.json").is_file():
        return out
    from verl_mem1.tiny_model import build_random_bert

    return build_random_bert(
        out, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536, max_position_embeddings=512
    )


def ensure_index(workdir: Path, encoder: str = "bm25") -> Path:
    """Build the HotpotQA corpus and its index under ``workdir``, or reuse them if already there."""
    name = "bm25" if encoder == "bm25" else Path(encoder).name
    if encoder == "minilm":
        encoder = str(minilm_shaped_encoder(workdir / "minilm-shaped"))
    index = workdir / f"index-{name}"
    if not (index / "meta.json").is_file():
        if not (workdir / "corpus.jsonl").is_file():
            build_hotpotqa_corpus(None, workdir / "corpus.jsonl")
        build_index(workdir / "corpus.jsonl", index, encoder, show_progress=True, max_length=128)
    return index


def check_same_results(urls: dict[str, str], questions: list[str], topk: int) -> None:
    """Every mode returns the same documents for the same questions, scores within 1e-5; raises otherwise."""
    import httpx

    answers = {}
    for mode, url in urls.items():
        rows = []
        for start in range(0, len(questions), 10):
            body = {"queries": questions[start : start + 10], "topk": topk, "return_scores": True}
            rows += httpx.post(f"{url}/retrieve", json=body, timeout=120).json()["result"]
        answers[mode] = rows
    first, *others = answers.values()
    for other in others:
        for a, b in zip(first, other, strict=True):
            if [h["document"]["id"] for h in a] != [h["document"]["id"] for h in b]:
                raise RuntimeError(f"modes return different documents: {a} vs {b}")
            if max(abs(x["score"] - y["score"]) for x, y in zip(a, b, strict=True)) > 1e-5:
                raise RuntimeError(f"modes' scores differ by more than 1e-5: {a} vs {b}")


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


def format_table(results: list[tuple[str, RunResult]]) -> str:
    lines = [
        "| server | client | clients | queries/request | requests | errors | throughput (req/s) | queries/s "
        "| p50 (ms) | p99 (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in results:
        lines.append(
            f"| {mode} | {r.client} | {r.clients} | {r.batch} | {r.requests} | {r.errors} | {r.throughput:.0f} | "
            f"{r.throughput * r.batch:.0f} | {r.percentile(50):.1f} | {r.percentile(99):.1f} |"
        )
    by_key = {(mode, r.client, r.batch): r for mode, r in results}
    for (mode, client, batch), r in by_key.items():
        for base_mode in ("per-request", "before"):
            base = by_key.get((base_mode, client, batch))
            if mode not in ("per-request", "before") and base is not None and base.throughput:
                lines.append(
                    f"\n{mode} / {base_mode}, {batch} queries/request ({client}): throughput "
                    f"{r.throughput / base.throughput:.2f}x, p99 {r.percentile(99) / base.percentile(99):.2f}x"
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
    parser.add_argument("--encoder", default="bm25", help="bm25 (default), minilm, or a Hugging Face encoder folder")
    parser.add_argument("--max-batch-queries", type=int, default=None, help="the batched server's cap (its default)")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout's server, measured as 'before'")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="also measure this server with these `mem1 serve retrieval` flags, e.g. 'window5=--batch-window-ms 5'",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=("batched", "per-request"),
        default=["batched"],
        help="server modes, each measured in turn: batched (the default server) and/or per-request",
    )
    args = parser.parse_args(argv)
    variants = {name: shlex.split(extra) for name, _, extra in (v.partition("=") for v in args.variant)}
    if any(not name or name in ("batched", "per-request", "before") for name in variants):
        parser.error("--variant needs NAME=FLAGS with a NAME other than batched, per-request or before")
    if args.clients <= 0 or args.requests <= 0 or args.max_seconds <= 0:
        parser.error("--clients, --requests and --max-seconds must be positive")

    with tempfile.TemporaryDirectory(prefix="retrieval-load-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        index = ensure_index(workdir, args.encoder)
        print(f"index: {index} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        questions = _questions()
        batched = [] if args.max_batch_queries is None else ["--max-batch-queries", str(args.max_batch_queries)]
        flags = {"batched": batched, "per-request": ["--max-batch-queries", "0"], "before": []}
        flags |= variants
        modes = [*args.modes, *variants, *(["before"] if args.baseline else [])]
        ports = {mode: free_port() for mode in modes}
        procs = {}
        results = []
        try:
            for mode in modes:  # all up at once only for the result check; each measured alone
                repo = args.baseline if mode == "before" else REPO
                serve = ["retrieval", "--index", str(index), *flags[mode]]
                procs[mode] = start_server(serve, ports[mode], timeout=300, repo=repo)
            urls = {mode: f"http://127.0.0.1:{port}" for mode, port in ports.items()}
            check_same_results(urls, questions[:300], args.topk)
            for mode in modes:
                for other, proc in procs.items():  # the idle server sleeps; stop it so it holds no core
                    os.kill(proc.pid, signal.SIGSTOP if other != mode else signal.SIGCONT)
                for client in args.client:
                    for batch in args.batch_sizes:
                        common = dict(clients=args.clients, batch=batch, topk=args.topk, client=client)
                        asyncio.run(run_load(urls[mode], questions, requests=args.clients, max_seconds=30, **common))
                        run = run_load(
                            urls[mode], questions, requests=args.requests, max_seconds=args.max_seconds, **common
                        )
                        results.append((mode, asyncio.run(run)))
        finally:
            for proc in procs.values():
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
                proc.wait(timeout=30)
    print(format_table(results))
    return 1 if any(r.errors for _, r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
