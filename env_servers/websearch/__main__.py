"""``python -m env_servers.websearch serve websearch ...``: the ``mem1 serve websearch`` command on its own.

The same sub-parser as ``mem1``; handy on a host that only runs the search server, and lets tests run the
real entry point in a subprocess.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from env_servers.websearch.cli import add_serve_websearch_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m env_servers.websearch", description="Serve live web search.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run an environment server")
    add_serve_websearch_command(serve.add_subparsers(dest="serve_command", required=True, metavar="SERVER"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
