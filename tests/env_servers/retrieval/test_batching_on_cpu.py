"""Dynamic batching across concurrent requests: same results as searching each request alone, batches that really
form and respect their cap, a failure that reaches every request of its batch and nothing else, and the server."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from env_servers.retrieval.batching import QueryBatcher
from env_servers.retrieval.index import Retriever, load_retriever


class Recording(Retriever):
    """Wraps a retriever: records each search's queries; slow enough for requests to pile up; fails on 'boom'."""

    def __init__(self, inner: Retriever, delay_s: float = 0.02) -> None:
        super().__init__(inner.docs, inner.meta)
        self.inner, self.delay_s, self.calls = inner, delay_s, []

    def _search(self, queries, k):
        self.calls.append(list(queries))
        time.sleep(self.delay_s)
        if "boom" in queries:
            raise RuntimeError("index exploded")
        return self.inner._search(queries, k)


def _requests(questions: list[dict], n: int) -> list[tuple[list[str], int]]:
    """n requests of 1-4 queries and topk 1-5."""
    return [([questions[(i * 3 + j) % len(questions)]["question"] for j in range(1 + i % 4)], 1 + i % 5)
            for i in range(n)]  # fmt: skip


async def _concurrently(batcher: QueryBatcher, requests):
    return await asyncio.gather(*(batcher.search(q, k) for q, k in requests), return_exceptions=True)


def _same(batched, alone, tolerance: float) -> None:
    """Per request, per query: the same documents in the same order, scores within ``tolerance``."""
    for got_rows, want_rows in zip(batched, alone, strict=True):
        for got, want in zip(got_rows, want_rows, strict=True):
            assert [d["id"] for d, _ in got] == [d["id"] for d, _ in want]
            assert all(abs(a - b) <= tolerance for (_, a), (_, b) in zip(got, want, strict=True))


def test_bm25_batches_return_what_each_request_gets_alone(bm25_retriever, dev_questions) -> None:
    requests = _requests(dev_questions, 40)
    recording = Recording(bm25_retriever)
    batcher = QueryBatcher(recording, max_batch_queries=64, window_ms=5)
    batched = asyncio.run(_concurrently(batcher, requests))
    _same(batched, [bm25_retriever.search(q, k) for q, k in requests], tolerance=0.0)
    assert batcher.batches == len(recording.calls) < len(requests) / 4  # requests were searched together
    assert batcher.queries == sum(len(q) for q, _ in requests)


@pytest.fixture(scope="module")
def bert_flat_index(small_corpus, tiny_bert_encoder, tmp_path_factory):
    from env_servers.retrieval.index import build_index

    out = tmp_path_factory.mktemp("bert-flat")
    return build_index(small_corpus, out, str(tiny_bert_encoder), max_length=64, show_progress=False)


@pytest.mark.parametrize("encoder", ["decoder (padded)", "bert (packed)"])
def test_dense_batches_return_what_each_request_gets_alone(
    encoder, dense_indexes, bert_flat_index, dev_questions
) -> None:
    retriever = load_retriever(dense_indexes["flat"] if encoder.startswith("decoder") else bert_flat_index)
    requests = _requests(dev_questions, 24)
    batcher = QueryBatcher(retriever, max_batch_queries=32, window_ms=5)
    batched = asyncio.run(_concurrently(batcher, requests))
    _same(batched, [retriever.search(q, k) for q, k in requests], tolerance=1e-5)  # a batch pads differently
    assert batcher.batches < len(requests)


def test_batches_respect_the_cap(bm25_retriever, dev_questions) -> None:
    recording = Recording(bm25_retriever)
    batcher = QueryBatcher(recording, max_batch_queries=10, window_ms=5)
    requests = [([dev_questions[i]["question"]] * 3, 3) for i in range(12)] + [(["x"] * 25, 2)]
    results = asyncio.run(_concurrently(batcher, requests))
    assert all(not isinstance(r, Exception) for r in results)
    sizes = [len(call) for call in recording.calls]
    # a batch takes whole requests up to the cap (3 + 3 + 3; the next waits); a request larger than it goes alone
    assert sizes == [9, 9, 9, 9, 25]


def test_a_failed_search_fails_its_batch_only(bm25_retriever, dev_questions) -> None:
    recording = Recording(bm25_retriever, delay_s=0.05)
    batcher = QueryBatcher(recording, max_batch_queries=64, window_ms=20)

    async def scenario():
        first = await _concurrently(batcher, [(["boom"], 1), ([dev_questions[0]["question"]], 1)])
        after = await batcher.search([dev_questions[1]["question"]], 2)
        return first, after

    first, after = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) and "index exploded" in str(r) for r in first)
    assert len(after) == 1 and len(after[0]) == 2  # the batcher keeps serving


def test_bad_settings_fail() -> None:
    with pytest.raises(ValueError, match="max_batch_queries"):
        QueryBatcher(None, max_batch_queries=0)  # type: ignore[arg-type]


def test_server_batches_concurrent_requests(bm25_retriever, dev_questions, wait_healthy) -> None:
    from env_servers.background import BackgroundServer
    from env_servers.retrieval.server import create_app

    slow = Recording(bm25_retriever, delay_s=0.01)
    requests = _requests(dev_questions, 48)
    with BackgroundServer(create_app(slow, batch_window_ms=2)) as server:
        results: dict[int, httpx.Response] = {}

        def send(i: int) -> None:
            queries, topk = requests[i]
            results[i] = httpx.post(f"{server.url}/retrieve", json={"queries": queries, "topk": topk}, timeout=60)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, (queries, topk) in enumerate(requests):
            assert results[i].status_code == 200
            want = [[d["id"] for d, _ in row] for row in bm25_retriever.search(queries, topk)]
            assert [[d["id"] for d in row] for row in results[i].json()["result"]] == want
        health = wait_healthy(server.url)
        assert health["batched_queries"] == sum(len(q) for q, _ in requests)
        assert health["batches"] < len(requests)
        bad = httpx.post(f"{server.url}/retrieve", json={"queries": ["a"], "topk": 10**8}, timeout=10)
        assert bad.status_code == 422 and "topk" in bad.text  # checked before it reaches a batch


def test_per_request_server_reports_no_batches(bm25_retriever, wait_healthy) -> None:
    from env_servers.background import BackgroundServer
    from env_servers.retrieval.server import create_app

    with BackgroundServer(create_app(bm25_retriever, max_batch_queries=0)) as server:
        r = httpx.post(f"{server.url}/retrieve", json={"queries": ["paris"], "topk": 2}, timeout=10)
        assert r.status_code == 200 and len(r.json()["result"][0]) == 2
        assert wait_healthy(server.url)["batches"] is None
