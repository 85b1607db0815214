"""The options every ``mem1 serve`` server shares (host, port, log level, access log, API key) and running an app
with them.

Only argparse is imported at module level: each server's CLI module imports this one and ``verl_mem1.cli``
imports those to build ``mem1 --help``, so uvicorn is imported by :func:`run_server` when a server starts.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
from typing import Any

DEFAULT_HOST = "127.0.0.1"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
API_KEY_ENV = "MEM1_API_KEY"  # the servers' bearer token; the project's clients send it from the same variable
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
OPEN_PATHS = frozenset({"/health"})  # answered without the token: start-up checks and load balancers probe it

logger = logging.getLogger(__name__)


def add_server_options(parser: argparse.ArgumentParser, default_port: int) -> None:
    """Add ``--host``, ``--port``, ``--log-level`` and ``--no-access-log`` to a ``mem1 serve`` subcommand."""
    group = parser.add_argument_group("server options")
    group.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}, local only)")
    group.add_argument("--port", type=int, default=default_port, help=f"port to listen on (default {default_port})")
    group.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="uvicorn log level (default info)")
    group.add_argument("--no-access-log", action="store_true", help="do not log every request (saves CPU under load)")
    group.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on every request but /health (default: ${API_KEY_ENV} if set); "
        "bind beyond loopback only with one",
    )
    ray = parser.add_argument_group("on a Ray cluster")
    ray.add_argument(
        "--on-ray",
        action="store_true",
        help="run this server in a detached Ray actor on the running cluster (bound to its node's address), print its "
        "URL and return; a server of the same name already running is reused",
    )
    ray.add_argument("--ray-name", default=None, help="the actor's name (default: from the server kind and arguments)")
    ray.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs the actor reserves (default 1)")


def server_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The options :func:`add_server_options` added, as ``uvicorn.run``'s keyword arguments."""
    return {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": not args.no_access_log}


class BearerTokenMiddleware:
    """An ASGI wrapper: HTTP requests other than :data:`OPEN_PATHS` need ``Authorization: Bearer <token>`` (401 with
    the reason otherwise), as vLLM's ``--api-key`` does."""

    def __init__(self, app: Any, token: str):
        if not token:
            raise ValueError("an empty API key protects nothing")
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") not in OPEN_PATHS:
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                reason = "wrong bearer token" if given else "missing 'Authorization: Bearer <key>' header"
                body = json.dumps({"detail": f"{reason} (this server runs with --api-key / ${API_KEY_ENV})"}).encode()
                await send({
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                })  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def api_key(args: argparse.Namespace | None = None) -> str | None:
    """The token a server requires: ``--api-key``, else ``$MEM1_API_KEY``, else None (an empty value counts as none)."""
    return (getattr(args, "api_key", None) or os.environ.get(API_KEY_ENV) or "").strip() or None


def bind_warning(host: str, token: str | None) -> str | None:
    """Why binding ``host`` without a token is risky, or None."""
    if token or host in LOOPBACK_HOSTS:
        return None
    return (
        f"serving on {host} without an API key: anyone who reaches this address can use the server; "
        f"set --api-key or ${API_KEY_ENV} (its clients send ${API_KEY_ENV})"
    )


def protect(app: Any, args: argparse.Namespace) -> Any:
    """``app`` behind the bearer token when one is configured, with a warning when it is not and the host is public."""
    token = api_key(args)
    warning = bind_warning(args.host, token)
    if warning:
        logger.warning(warning)
    return BearerTokenMiddleware(app, token) if token else app


def run_server(app: Any, args: argparse.Namespace) -> None:
    """Serve the ASGI ``app`` with uvicorn on the parsed server options until interrupted."""
    import uvicorn

    uvicorn.run(protect(app, args), **server_settings(args))
