"""Search-R1's ``/retrieve`` API, shared by every search server (local retrieval, web search).

Search-R1's server is what MEM1's rollouts and verl's search tool were written against, so the request and
response shapes are kept exactly (including ``return_scores: false`` returning bare documents). Validation
turns every bad request into a 4xx whose message says what is wrong: a bad request from one rollout must
never take a server down.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

DEFAULT_TOPK = 3  # Search-R1's default


class RetrieveRequest(BaseModel):
    """Search-R1's request, plus a single ``query`` and a ``top_k`` alias for convenience."""

    model_config = ConfigDict(extra="ignore")

    queries: list[StrictStr] | None = Field(default=None, description="a batch of queries, searched in one call")
    query: StrictStr | None = Field(default=None, description="a single query (instead of `queries`)")
    topk: StrictInt | None = Field(default=None, description=f"documents per query (default {DEFAULT_TOPK})")
    top_k: StrictInt | None = Field(default=None, description="alias of `topk`")
    return_scores: StrictBool = Field(default=False, description="wrap each document as {document, score}")


class Document(BaseModel):
    id: str
    contents: str = Field(description='"Title"\\ntext, as in Search-R1\'s wiki corpus')


class ScoredDocument(BaseModel):
    document: Document
    score: float


class RetrieveResponse(BaseModel):
    result: list[list[ScoredDocument]] | list[list[Document]]


class BadRequest(Exception):
    """A request that parsed but is not acceptable (limits, both/neither query fields, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def describe_errors(errors: list[dict[str, Any]]) -> str:
    """Turn pydantic errors into one line like ``topk: Input should be a valid integer``."""
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "")
            parts.append(f"malformed JSON body: {reason}".rstrip(": "))
        elif not loc and err.get("type") == "missing":
            parts.append("request body is required: a JSON object with `queries` or `query`")
        elif not loc and err.get("type") in ("model_attributes_type", "dict_type", "model_type"):
            parts.append("request body must be a JSON object with `queries` or `query`")
        elif not loc:
            parts.append(f"request body: {err.get('msg')}")
        else:
            parts.append(f"{'.'.join(loc)}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def validate_request(
    req: RetrieveRequest, *, max_queries: int, max_topk: int, max_query_chars: int
) -> tuple[list[str], int]:
    if req.queries is not None and req.query is not None:
        raise BadRequest("give either `queries` (a list) or `query` (a string), not both")
    if req.queries is None and req.query is None:
        raise BadRequest("missing `queries` (a list of strings) or `query` (a string)")
    queries = req.queries if req.queries is not None else [req.query or ""]
    if not queries:
        raise BadRequest("`queries` is empty: give at least one query")
    if len(queries) > max_queries:
        raise BadRequest(f"too many queries: {len(queries)} > {max_queries} per request")
    for i, q in enumerate(queries):
        where = "query" if req.query is not None else f"queries[{i}]"
        if not q.strip():
            raise BadRequest(f"{where} is empty")
        if len(q) > max_query_chars:
            raise BadRequest(f"{where} is too long: {len(q)} > {max_query_chars} characters")
    if req.topk is not None and req.top_k is not None and req.topk != req.top_k:
        raise BadRequest(f"`topk` ({req.topk}) and its alias `top_k` ({req.top_k}) disagree")
    topk = req.topk if req.topk is not None else req.top_k if req.top_k is not None else DEFAULT_TOPK
    if not 1 <= topk <= max_topk:
        raise BadRequest(f"topk must be between 1 and {max_topk}, got {topk}")
    return queries, topk


def install_error_handlers(app: FastAPI) -> None:
    """4xx JSON errors for unparseable (400), invalid (422) and unacceptable (422) requests."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        # Drop the echoed input: a rejected 256-query batch should not come back in the error body.
        brief = jsonable_encoder([{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in errors])
        status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
        return JSONResponse(status_code=status, content={"detail": describe_errors(errors), "errors": brief})

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": exc.message})
