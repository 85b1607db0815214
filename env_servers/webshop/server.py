"""The WebShop HTTP server: many concurrent sessions over one catalog.

    POST   /sessions                  {"goal_index": int | null}  → {"session_id", "goal_index", "instruction", step}
    POST   /sessions/{id}/reset       {"goal_index": int | null}  → step
    POST   /sessions/{id}/step        {"action": "search[...]" | "click[...]"} → step
    GET    /sessions/{id}             → step (the current page, nothing changes)
    DELETE /sessions/{id}             → {"closed": id}
    GET    /goals?offset=0&limit=100  → {"total", "goals": [{"index", "instruction", "asin", "options"}]}
    GET    /health

where ``step`` is ``{"observation", "reward", "done", "valid", "info", "available_actions": {"has_search_bar",
"clickables"}}``. A bad action is not an HTTP error: it is a step with ``valid: false`` and an observation that
says why. An unknown session is a 404, a bad request body or goal index a 4xx with the reason.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from env_servers.search_api import describe_errors
from env_servers.webshop.shop import BadGoal, Shop, UnknownSession

MAX_ACTION_CHARS = 2000
_WHOLE_BODY_ERRORS = ("missing", "model_attributes_type", "dict_type", "model_type")


def _describe_errors(errors: list[dict[str, Any]], path: str) -> str:
    """Like ``describe_errors``, but a missing or non-object body names this server's body, not /retrieve's."""
    expected = '{"action": "search[...]" or "click[...]"}' if path.endswith("/step") else '{"goal_index": int or null}'
    parts = []
    for err in errors:
        if not [p for p in err.get("loc", ()) if p != "body"] and err.get("type") in _WHOLE_BODY_ERRORS:
            parts.append(f"request body must be a JSON object {expected}")
        else:
            parts.append(describe_errors([err]))
    return "; ".join(parts) or "invalid request"


class OpenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    goal_index: StrictInt | None = Field(default=None, description="goal to play; null draws one as WebShop does")


class StepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: StrictStr = Field(description="search[keywords] or click[button text]", max_length=MAX_ACTION_CHARS)


def _goal_view(index: int, goal: dict[str, Any]) -> dict[str, Any]:
    """A goal as ``GET /goals`` lists it: a synthetic goal's options by name; a human goal's are bare values."""
    options = goal["goal_options"]
    named = isinstance(options, dict)
    return {
        "index": index,
        "instruction": goal["instruction_text"],
        "asin": goal["asin"],
        "options": dict(options) if named else {},
        "option_values": list(options.values()) if named else list(options),
    }


def create_app(shop: Shop) -> FastAPI:
    app = FastAPI(title="MEM1 WebShop server", description="WebShop's text environment over HTTP")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=422, content={"detail": f"invalid request: {_describe_errors(exc.errors(), request.url.path)}"}
        )

    @app.exception_handler(UnknownSession)
    async def _unknown(request: Request, exc: UnknownSession) -> JSONResponse:
        return JSONResponse(
            status_code=404, content={"detail": f"unknown session {exc.args[0]!r} (closed or never opened)"}
        )

    @app.exception_handler(BadGoal)
    async def _bad_goal(request: Request, exc: BadGoal) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=500, content={"detail": f"webshop failed: {type(exc).__name__}: {exc}"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        catalog = shop.catalog
        return {
            "status": "ok",
            "products": len(catalog.products),
            "goals": len(catalog.goals),
            "human_goals": catalog.human_goals,
            "sessions": shop.num_sessions,
            "noun_tagger": shop.noun_tagger,
            "option_rule": shop.option_rule,
            "observation": shop.observation,
            "load_s": {k: round(v, 3) for k, v in shop.load_s.items()},
        }

    @app.get("/goals")
    async def goals(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=10000)) -> dict[str, Any]:
        chosen = shop.catalog.goals[offset : offset + limit]
        return {
            "total": len(shop.catalog.goals),
            "goals": [_goal_view(offset + i, g) for i, g in enumerate(chosen)],
        }

    @app.post("/sessions")
    async def open_session(req: OpenRequest | None = None) -> dict[str, Any]:
        session_id, result = await run_in_threadpool(shop.create, req.goal_index if req else None)
        goal = shop.goal_of(session_id)
        return {
            "session_id": session_id,
            "goal_index": result.info["goal_index"],
            "instruction": goal["instruction_text"],
            **result.to_dict(),
        }

    @app.post("/sessions/{session_id}/reset")
    async def reset(session_id: str, req: OpenRequest | None = None) -> dict[str, Any]:
        result = await run_in_threadpool(shop.reset, session_id, req.goal_index if req else None)
        return {"instruction": shop.goal_of(session_id)["instruction_text"], **result.to_dict()}

    @app.post("/sessions/{session_id}/step")
    async def step(session_id: str, req: StepRequest) -> dict[str, Any]:
        return (await run_in_threadpool(shop.step, session_id, req.action)).to_dict()

    @app.get("/sessions/{session_id}")
    async def observe(session_id: str) -> dict[str, Any]:
        return (await run_in_threadpool(shop.observe, session_id)).to_dict()

    @app.delete("/sessions/{session_id}")
    async def close(session_id: str) -> dict[str, str]:
        shop.close(session_id)
        return {"closed": session_id}

    return app


def bundled_shop_server():
    """A loopback server (``BackgroundServer``, not started) over the bundled 100-product shop: what
    ``--webshop auto``, ``mem1.webshop_url=auto`` and the demo serve for a run."""
    from env_servers.background import BackgroundServer
    from env_servers.webshop.data import load_catalog

    return BackgroundServer(create_app(Shop(load_catalog())))
