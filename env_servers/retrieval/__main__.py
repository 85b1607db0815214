"""``python -m env_servers.retrieval``: the ``mem1 corpus|index|serve`` retrieval commands on their own.

The same sub-parsers as ``mem1``; handy where only this package is wanted (a retrieval host) and used by
the load benchmark to run the server in its own process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from env_servers.retrieval.cli import add_corpus_commands, add_index_commands, add_serve_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m env_servers.retrieval", description="Build and serve Search-R1-compatible retrieval."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    corpus = sub.add_parser("corpus", help="build retrieval corpora (JSONL {id, contents})")
    add_corpus_commands(corpus.add_subparsers(dest="corpus_command", required=True, metavar="SOURCE"))
    index = sub.add_parser("index", help="build retrieval indexes")
    add_index_commands(index.add_subparsers(dest="index_command", required=True, metavar="ACTION"))
    serve = sub.add_parser("serve", help="run an environment server")
    add_serve_command(serve.add_subparsers(dest="serve_command", required=True, metavar="SERVER"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
