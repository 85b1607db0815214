"""``mem1 serve websearch``: the web search environment server.

Only the stdlib is imported at module level: ``verl_mem1.cli`` imports this module to build ``mem1 --help``,
so fastapi, httpx and uvicorn are imported by the handler. The API key is read from ``$SERPER_API_KEY``
only — a key on the command line ends up in shell history and ``ps`` output.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from env_servers.serve_options import add_server_options, server_settings
from env_servers.websearch import API_KEY_ENV, DEFAULT_BASE_URL, DEFAULT_CACHE_DIR, DEFAULT_PORT, PROVIDERS

EXIT_USAGE = 2
PROG = "mem1 serve websearch"


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _serve_websearch(args: argparse.Namespace) -> int:
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        return _fail(
            f"{API_KEY_ENV} is not set: export your Serper API key (https://serper.dev) as {API_KEY_ENV}; "
            "it is read from the environment only"
        )
    if args.rate_limit < 0:
        return _fail(f"--rate-limit must be >= 0 (0: unlimited), got {args.rate_limit}")
    if args.max_retries < 0:
        return _fail(f"--max-retries must be >= 0, got {args.max_retries}")
    if args.timeout <= 0:
        return _fail(f"--timeout must be > 0, got {args.timeout}")

    from env_servers.websearch.server import serve

    try:
        serve(
            args.provider,
            api_key=key,
            cache_dir=None if args.no_cache else args.cache_dir,
            rate_limit=args.rate_limit,
            max_retries=args.max_retries,
            timeout_s=args.timeout,
            base_url=args.base_url,
            max_queries=args.max_queries,
            **server_settings(args),
        )
    except (ValueError, OSError) as e:  # bad settings or an unusable cache directory, before binding
        return _fail(str(e))
    return 0


def add_serve_websearch_command(subparsers: Any) -> None:
    """Add ``websearch`` to ``mem1 serve``."""
    p = subparsers.add_parser(
        "websearch",
        help="serve live web search (Serper) over Search-R1's HTTP API (POST /retrieve, GET /health)",
        description=(
            "Answer Search-R1's POST /retrieve from a web search provider, so MEM1 episodes search the live web "
            'with the same client as the local retriever: {"queries": [...], "topk": 3, "return_scores": true} '
            'returns {"result": [[{"document": {"id": url, "contents": "\\"Title\\"\\nsnippet (url)"}, '
            '"score": 1/rank}, ...]]}. Responses are cached on disk, requests rate-limited and retried. '
            f"The API key is read from the {API_KEY_ENV} environment variable only."
        ),
        epilog=f"example: {API_KEY_ENV}=... mem1 serve websearch --provider serper --port {DEFAULT_PORT}",
    )
    p.add_argument(
        "--provider", choices=PROVIDERS, default="serper", help="web search API (default serper; key: $SERPER_API_KEY)"
    )
    p.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE_DIR,
        metavar="DIR",
        help=f"on-disk response cache; repeated queries make no API call (default {DEFAULT_CACHE_DIR})",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the response cache")
    p.add_argument(
        "--rate-limit",
        type=float,
        default=5.0,
        metavar="PER_S",
        help="most API requests per second, retries included, shared by all clients (default 5; 0: unlimited)",
    )
    p.add_argument(
        "--max-retries",
        type=int,
        default=3,
        metavar="N",
        help="retries on 429, 5xx, timeouts and connection errors, with exponential backoff (default 3)",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="per-request API timeout (default 10)"
    )
    p.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        metavar="URL",
        help=f"API base URL, for proxies and tests (default {DEFAULT_BASE_URL})",
    )
    p.add_argument("--max-queries", type=int, default=32, metavar="N", help="most queries per request (default 32)")
    add_server_options(p, DEFAULT_PORT)
    p.set_defaults(func=_serve_websearch)
