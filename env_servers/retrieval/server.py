"""The retrieval HTTP server, speaking Search-R1's ``/retrieve`` protocol (``env_servers.search_api``).

Search runs off the event loop so /health stays responsive under load. Concurrent requests are searched together
(``env_servers.retrieval.batching``); ``max_batch_queries=0`` searches each request on its own, one at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from env_servers.retrieval.batching import QueryBatcher
from env_servers.retrieval.index import Retriever
from env_servers.search_api import RetrieveRequest, RetrieveResponse, install_error_handlers, validate_request


class HealthResponse(BaseModel):
    status: str
    num_docs: int
    encoder: str
    batches: int | None = None  # searches run by the batcher (None: per-request searching)
    batched_queries: int | None = None  # queries they held


def create_app(
    retriever: Retriever,
    *,
    max_queries: int = 256,
    max_topk: int = 100,
    max_query_chars: int = 4096,
    max_batch_queries: int = 64,
    batch_window_ms: float = 1.0,
) -> FastAPI:
    """A FastAPI app serving ``retriever`` over Search-R1's API (``POST /retrieve``, ``GET /health``).

    Args:
        max_batch_queries: most queries searched together across concurrent requests (0: each request alone).
        batch_window_ms: how long a search waits for more requests to join it when fewer are waiting.
    """
    app = FastAPI(title="MEM1 retrieval server", description="Search-R1-compatible retrieval API")
    batcher = (
        QueryBatcher(retriever, max_batch_queries=max_batch_queries, window_ms=batch_window_ms)
        if (max_batch_queries > 0)
        else None
    )
    lock = threading.Lock()  # retrievers (bm25s' state, torch, faiss HNSW efSearch) are not shared across threads

    def search_alone(queries: list[str], topk: int) -> list[list[tuple[dict, float]]]:
        with lock:
            return retriever.search(queries, topk)

    install_error_handlers(app)

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=500, content={"detail": f"search failed: {type(exc).__name__}: {exc}"})

    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        stats = {"batches": batcher.batches, "batched_queries": batcher.queries} if batcher else {}
        return HealthResponse(status="ok", num_docs=retriever.num_docs, encoder=retriever.encoder, **stats)

    @app.post("/retrieve", response_model=RetrieveResponse)
    async def retrieve(req: RetrieveRequest) -> JSONResponse:
        queries, topk = validate_request(
            req, max_queries=max_queries, max_topk=max_topk, max_query_chars=max_query_chars
        )
        if batcher is not None:
            hits = await batcher.search(queries, topk)
        else:
            hits = await run_in_threadpool(search_alone, queries, topk)
        if req.return_scores:
            result: list = [[{"document": doc, "score": score} for doc, score in row] for row in hits]
        else:
            result = [[doc for doc, _ in row] for row in hits]
        # The documents come from our own index, already in the response shape: skip FastAPI's re-validation
        # of the response model (it documents the schema) — it costs more than a BM25 search.
        return JSONResponse({"result": result})

    return app


def serve(
    load: Callable[[], Retriever],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_queries: int = 256,
    max_topk: int = 100,
    max_batch_queries: int = 64,
    batch_window_ms: float = 1.0,
    threads: int | None = None,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Load a retriever with ``load()`` (an index directory, or Search-R1's files) and serve it with uvicorn until
    interrupted."""
    import uvicorn

    if threads is not None:  # the encoder's intra-op threads: one batch at a time uses all of them
        import torch

        torch.set_num_threads(threads)
    app = create_app(
        load(),
        max_queries=max_queries,
        max_topk=max_topk,
        max_batch_queries=max_batch_queries,
        batch_window_ms=batch_window_ms,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
