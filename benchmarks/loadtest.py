"""What the server load tests share: a `mem1 serve ...` process on loopback and a pooled async HTTP client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]

# ``call(method, path, body) -> (status, json)``
Call = Callable[[str, str, "dict | None"], Awaitable[tuple[int, Any]]]


def start_server(serve_args: list[str], port: int, timeout: float = 60.0, repo: Path = REPO) -> subprocess.Popen:
    """``mem1 serve SERVE_ARGS`` of the checkout ``repo`` in its own process (no access log), once ``/health``
    answers 200."""
    cmd = [sys.executable, "-m", "verl_mem1.cli", "serve", *serve_args]
    cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(cmd, cwd=repo, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("server did not become healthy")


def http_session(kind: str, url: str, clients: int) -> tuple[Any, Call]:
    """An HTTP client (an async context manager) and a ``call(method, path, body) -> (status, json)`` for it.

    aiohttp is the default: at 32 concurrent requests httpx's connection pool costs more CPU than the
    server does, so with httpx the number measured is mostly the client's.
    """
    if kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            url, connector=aiohttp.TCPConnector(limit=clients), timeout=aiohttp.ClientTimeout(total=30)
        )

        async def call_aiohttp(method: str, path: str, body: dict | None) -> tuple[int, Any]:
            async with session.request(method, path, json=body) as r:
                return r.status, await r.json(content_type=None)

        return session, call_aiohttp
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    client = httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits)

    async def call_httpx(method: str, path: str, body: dict | None) -> tuple[int, Any]:
        r = await client.request(method, path, json=body)
        return r.status_code, r.json()

    return client, call_httpx
