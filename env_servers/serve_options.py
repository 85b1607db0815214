"""The options every ``mem1 serve`` server shares (host, port, log level, access log) and running an app with them.

Only argparse is imported at module level: each server's CLI module imports this one and ``verl_mem1.cli``
imports those to build ``mem1 --help``, so uvicorn is imported by :func:`run_server` when a server starts.
"""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_HOST = "127.0.0.1"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def add_server_options(parser: argparse.ArgumentParser, default_port: int) -> None:
    """Add ``--host``, ``--port``, ``--log-level`` and ``--no-access-log`` to a ``mem1 serve`` subcommand."""
    group = parser.add_argument_group("server options")
    group.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}, local only)")
    group.add_argument("--port", type=int, default=default_port, help=f"port to listen on (default {default_port})")
    group.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="uvicorn log level (default info)")
    group.add_argument("--no-access-log", action="store_true", help="do not log every request (saves CPU under load)")
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


def run_server(app: Any, args: argparse.Namespace) -> None:
    """Serve the ASGI ``app`` with uvicorn on the parsed server options until interrupted."""
    import uvicorn

    uvicorn.run(app, **server_settings(args))
