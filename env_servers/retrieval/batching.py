"""Dynamic batching: the queries of concurrent requests are encoded in one forward pass and searched in one call.

A dense retriever's cost is its encoder (~95% of a query's time on CPU), and a batch of queries costs far less than
the same queries one by one (8 queries in one pass: ~5x one, not 8x). Rollout workers send many small requests at
once, so the server collects what is waiting: one worker takes the first request, then whatever else has arrived
(up to ``max_batch_queries`` queries, a request never split, waiting at most ``window_ms`` for more), searches it
all with the largest ``topk`` asked, and hands each request its own rows cut to its ``topk``. While a batch runs
the next one gathers, so under load batches grow by themselves and when idle a request waits at most
``window_ms``. Results are those of searching each request alone (the same documents; dense scores within float
rounding of a different batch shape).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from env_servers.retrieval.index import Retriever, SearchResult


@dataclass
class _Request:
    queries: list[str]
    topk: int
    future: asyncio.Future = field(repr=False)


class QueryBatcher:
    """``await batcher.search(queries, topk)``: the retriever's result for this request, searched with the queries of
    the requests waiting beside it. One search runs at a time, in one worker thread (the retriever's own threads
    use the cores)."""

    def __init__(self, retriever: Retriever, *, max_batch_queries: int = 64, window_ms: float = 1.0) -> None:
        if max_batch_queries < 1 or window_ms < 0:
            raise ValueError("max_batch_queries must be >= 1 and window_ms >= 0")
        self.retriever = retriever
        self.max_batch_queries = max_batch_queries
        self.window_s = window_ms / 1000
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task | None = None
        self._carry: _Request | None = None  # a request that did not fit in the last batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrieval-batch")
        self.batches = 0  # searches run, for /health and tests
        self.queries = 0  # queries searched

    async def search(self, queries: list[str], topk: int) -> SearchResult:
        if self._queue is None:  # created in the serving event loop
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        request = _Request(queries, topk, asyncio.get_running_loop().create_future())
        await self._queue.put(request)
        return await request.future

    async def _gather(self) -> list[_Request]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        first, self._carry = (self._carry, None) if self._carry is not None else (await self._queue.get(), None)
        batch, size = [first], len(first.queries)  # a request larger than the cap goes alone, whole
        deadline = loop.time() + self.window_s
        while size < self.max_batch_queries:
            try:
                request = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(request.queries) > self.max_batch_queries:
                self._carry = request  # first in the next batch
                break
            batch.append(request)
            size += len(request.queries)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            queries = [q for request in batch for q in request.queries]
            topk = max(request.topk for request in batch)
            try:
                rows = await loop.run_in_executor(self._executor, self.retriever.search, queries, topk)
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets the failure
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            self.batches += 1
            self.queries += len(queries)
            start = 0
            for request in batch:
                mine = rows[start : start + len(request.queries)]
                start += len(request.queries)
                if not request.future.done():  # a client that went away cancelled its future
                    request.future.set_result([row[: request.topk] for row in mine])

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
