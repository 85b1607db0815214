"""32 concurrent clients against the BM25 server over the HotpotQA corpus: no errors, bounded time."""

from __future__ import annotations

import asyncio

import httpx
import pytest

pytestmark = pytest.mark.e2e

CLIENTS = 32
REQUESTS_PER_CLIENT = 10


async def _run(base_url: str, questions: list[str]) -> list[str]:
    errors: list[str] = []
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0, limits=limits) as client:

        async def worker(w: int) -> None:
            for i in range(REQUESTS_PER_CLIENT):
                n = 1 + (w + i) % 4  # mix single and batched requests
                queries = [questions[(w * REQUESTS_PER_CLIENT + i + j) % len(questions)] for j in range(n)]
                try:
                    r = await client.post("/retrieve", json={"queries": queries, "topk": 3, "return_scores": True})
                    result = r.json()["result"] if r.status_code == 200 else None
                    if result is None or len(result) != n or any(len(row) != 3 for row in result):
                        errors.append(f"worker {w} request {i}: HTTP {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    errors.append(f"worker {w} request {i}: {type(e).__name__}: {e}")

        await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(CLIENTS))), timeout=120)
    return errors


def test_32_concurrent_clients_no_errors(bm25_server: str, dev_questions: list[dict]) -> None:
    errors = asyncio.run(_run(bm25_server, [q["question"] for q in dev_questions]))
    assert errors == []
    assert httpx.get(f"{bm25_server}/health").json()["status"] == "ok"
