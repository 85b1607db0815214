"""The web search HTTP server: Search-R1's ``/retrieve`` API answered from Serper.

Same request model, validation and 4xx messages as the retrieval server (``env_servers.search_api``),
so ``RetrievalEnvironment`` and verl's search tool cannot tell the two apart. Provider failures (key
rejected, rate-limited past the retries, malformed responses) answer 502 with the reason and the server
keeps serving. Queries of a batch are searched concurrently; the client's limiter paces the API calls.

Documents: ``{"id": url, "contents": "\\"Title\\"\\nsnippet (url)"}``; scores are ``1 / rank`` (1, 0.5,
0.33, ...): a web search API gives an order, not comparable relevance scores, and ``1 / rank`` keeps
the order while staying a float like the retriever's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from env_servers.search_api import RetrieveRequest, RetrieveResponse, install_error_handlers, validate_request
from env_servers.websearch import API_KEY_ENV, DEFAULT_BASE_URL, DEFAULT_CACHE_DIR, DEFAULT_PORT, PROVIDERS
from env_servers.websearch.serper import SearchResult, SerperClient, SerperError

log = logging.getLogger(__name__)


class WebSearchHealth(BaseModel):
    status: str
    provider: str


def _document(result: SearchResult) -> dict[str, str]:
    return {"id": result.url or f"serper:{result.position}", "contents": result.contents()}


def create_app(
    client: SerperClient, *, max_queries: int = 32, max_topk: int = 10, max_query_chars: int = 2048
) -> FastAPI:
    """A FastAPI app answering ``POST /retrieve`` and ``GET /health`` from ``client``.

    ``max_topk`` is capped at the client's ``num_results`` (Serper returns 10 per query by default).
    """
    max_topk = min(max_topk, client.num_results)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await client.open()
        yield
        await client.aclose()

    app = FastAPI(
        title="MEM1 web search server",
        description="Search-R1-compatible /retrieve API answered from Serper web search",
        lifespan=lifespan,
    )

    install_error_handlers(app)

    @app.exception_handler(SerperError)
    async def _provider(request: Request, exc: SerperError) -> JSONResponse:
        reason = client.redact(str(exc))
        log.warning("web search failed: %s", reason)
        return JSONResponse(status_code=502, content={"detail": f"web search failed: {reason}"})

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            status_code=500, content={"detail": f"search failed: {type(exc).__name__}: {client.redact(str(exc))}"}
        )

    @app.get("/health", response_model=WebSearchHealth)
    async def health() -> WebSearchHealth:
        return WebSearchHealth(status="ok", provider="serper")

    @app.post("/retrieve", response_model=RetrieveResponse)
    async def retrieve(req: RetrieveRequest) -> JSONResponse:
        queries, topk = validate_request(
            req, max_queries=max_queries, max_topk=max_topk, max_query_chars=max_query_chars
        )
        outcomes = await asyncio.gather(*(client.search(q) for q in queries), return_exceptions=True)
        for outcome in outcomes:  # every search has finished: no error is left unretrieved
            if isinstance(outcome, BaseException):
                raise outcome
        rows: list[list[SearchResult]] = [list(o)[:topk] for o in outcomes]  # type: ignore[arg-type]
        result: list[Any]
        if req.return_scores:
            result = [[{"document": _document(r), "score": 1.0 / k} for k, r in enumerate(row, 1)] for row in rows]
        else:
            result = [[_document(r) for r in row] for row in rows]
        return JSONResponse({"result": result})

    return app


def serve(
    provider: str = "serper",
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    api_key: str | None = None,
    cache_dir: Path | str | None = DEFAULT_CACHE_DIR,
    rate_limit: float | None = 5.0,
    max_retries: int = 3,
    timeout_s: float = 10.0,
    base_url: str = DEFAULT_BASE_URL,
    max_queries: int = 32,
    max_topk: int = 10,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Serve web search with uvicorn until interrupted. The key defaults to ``$SERPER_API_KEY``.

    Raises ``MissingAPIKeyError`` (a ``ValueError``) without a key and ``ValueError``/``OSError`` for bad
    settings or an unusable cache directory, all before binding the port.
    """
    import os

    import uvicorn

    if provider not in PROVIDERS:
        raise ValueError(f"unknown web search provider {provider!r}; available: {', '.join(PROVIDERS)}")
    client = SerperClient(
        api_key if api_key is not None else os.environ.get(API_KEY_ENV, ""),
        base_url=base_url,
        timeout_s=timeout_s,
        max_retries=max_retries,
        rate_limit_per_s=rate_limit,
        cache_dir=cache_dir,
    )
    app = create_app(client, max_queries=max_queries, max_topk=max_topk)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
