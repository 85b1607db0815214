"""A fake Serper for the websearch tests: a FastAPI app run on loopback by the fixtures in conftest.py.

It speaks Serper's protocol (``POST /search``, ``X-API-KEY``, ``{"q", "num"}``), records every
request and any protocol violation, and plays a script of behaviours (401, 429 N times, timeouts, ...)
before falling back to its default, so each failure path is exercised over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from env_servers.background import BackgroundServer
from env_servers.websearch.serper import SerperClient

API_KEY = "sk-test-serper-5f2c9a1e7d"  # distinctive, so a leak anywhere is easy to spot

# A behaviour is a name, optionally with an argument: ("429", "0.3") sends Retry-After: 0.3,
# ("sleep", 1.0) answers normally after a second.
Behaviour = str | tuple[str, Any]


def organic_results(query: str, num: int) -> list[dict[str, Any]]:
    """Realistic organic rows: Serper adds optional fields (date, sitelinks, attributes) to some of them."""
    slug = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-") or "q"
    rows = []
    for i in range(1, num + 1):
        row: dict[str, Any] = {
            "title": f"{query} - Result {i} | Example",
            "link": f"https://example.org/{slug}/{i}",
            "snippet": f"Snippet {i} about {query}. It has\nline breaks  and  extra spaces.",
            "position": i,
        }
        if i == 1:
            row["sitelinks"] = [{"title": "History", "link": f"https://example.org/{slug}/history"}]
        if i % 3 == 0:
            row["date"] = "Mar 3, 2024"
        rows.append(row)
    return rows


def serper_body(query: str, num: int, *, answer_box: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "searchParameters": {"q": query, "type": "search", "num": num, "engine": "google"},
        "organic": organic_results(query, num),
        "peopleAlsoAsk": [{"question": f"What is {query}?", "snippet": "...", "link": "https://example.org/paa"}],
        "relatedSearches": [{"query": f"{query} meaning"}],
        "credits": 1,
    }
    if answer_box:
        body["answerBox"] = {"title": f"{query} answer", "answer": "330 m", "link": "https://example.org/answer"}
        body["knowledgeGraph"] = {"title": "Eiffel Tower", "type": "Tower", "description": "A tower in Paris."}
    return body


def expected_contents(query: str, i: int) -> str:
    """What the websearch server must return for organic result ``i`` (1-based) of ``query``."""
    row = organic_results(query, i)[i - 1]
    return f'"{row["title"]}"\n{" ".join(row["snippet"].split())} ({row["link"]})'


@dataclass
class Seen:
    time: float
    body: Any
    key: str | None


class FakeSerper:
    """Serper's ``/search`` endpoint with scripted failures; thread-safe (it runs in uvicorn's thread)."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.url = ""
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.script: deque[Behaviour] = deque()
            self.default: Behaviour = "ok"
            self.seen: list[Seen] = []
            self.violations: list[str] = []

    def then(self, *behaviours: Behaviour, default: Behaviour = "ok") -> None:
        """Answer the next requests with ``behaviours``, one each, then ``default``."""
        with self._lock:
            self.script.extend(behaviours)
            self.default = default

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.seen)

    def queries(self) -> list[str]:
        with self._lock:
            return [s.body.get("q") if isinstance(s.body, dict) else None for s in self.seen]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        @app.post("/search")
        async def search(request: Request) -> Response:
            raw = await request.body()
            key = request.headers.get("x-api-key")
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            with self._lock:
                self.seen.append(Seen(time.monotonic(), body, key))
                behaviour = self.script.popleft() if self.script else self.default
                if request.headers.get("content-type") != "application/json":
                    self.violations.append(f"content-type {request.headers.get('content-type')!r}")
                if not (isinstance(body, dict) and isinstance(body.get("q"), str) and isinstance(body.get("num"), int)):
                    self.violations.append(f"body {raw[:100]!r}")
            if key != self.api_key:  # what Serper answers for a wrong key
                return JSONResponse({"message": "Unauthorized.", "statusCode": 403}, status_code=403)
            name, arg = behaviour if isinstance(behaviour, tuple) else (behaviour, None)
            if name == "sleep":
                await asyncio.sleep(arg)
                name = "ok"
            q, num = body["q"], body["num"]
            if name == "ok":
                return JSONResponse(serper_body(q, num))
            if name == "answer_box":
                return JSONResponse(serper_body(q, num, answer_box=True))
            if name == "429":
                headers = {"Retry-After": str(arg)} if arg is not None else None
                return JSONResponse({"message": "Too many requests"}, status_code=429, headers=headers)
            if name in ("400", "401", "500", "503"):
                return JSONResponse({"message": f"error {name}", "statusCode": int(name)}, status_code=int(name))
            if name == "echo_key":  # a misbehaving proxy that echoes the request headers
                return JSONResponse({"message": f"bad request, headers: X-API-KEY={key}"}, status_code=400)
            if name == "not_json":
                return Response(b"<html>Service temporarily unavailable</html>", media_type="text/html")
            if name == "no_organic":
                return JSONResponse({"searchParameters": {"q": q}, "credits": 1})
            if name == "wrong_types":
                return JSONResponse({"organic": [{"title": 3, "link": ["x"], "snippet": None, "position": "1"}]})
            if name == "organic_not_list":
                return JSONResponse({"organic": {"title": "x"}})
            raise AssertionError(f"unknown behaviour {behaviour!r}")

        return app


@dataclass
class Running:
    """A websearch server started by the ``websearch`` fixture, and the client it searches with."""

    url: str
    client: SerperClient
    server: BackgroundServer
