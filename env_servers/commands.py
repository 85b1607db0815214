"""The environment servers' commands, ``corpus``, ``index`` and ``serve SERVER``, in one parser, and a way to run one.

Each server package defines its own subcommands in its ``cli`` module (options, handlers); this module hangs them
together. ``mem1`` mounts them (``verl_mem1/cli``), and ``on_ray.py`` runs ``serve`` commands inside Ray actors with
``run_command``, so nothing here imports the ``mem1`` command or the training stack. The ``cli`` modules import only
the stdlib at module level.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from env_servers.llm.cli import add_serve_llm_command
from env_servers.retrieval.cli import add_corpus_commands, add_index_commands, add_serve_command
from env_servers.websearch.cli import add_serve_websearch_command
from env_servers.webshop.cli import add_serve_webshop_command


def add_corpus_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 corpus SOURCE`` (build retrieval corpora)."""
    corpus = subparsers.add_parser("corpus", help="build retrieval corpora (JSONL {id, contents})")
    add_corpus_commands(corpus.add_subparsers(dest="corpus_command", required=True, metavar="SOURCE"))
    return corpus


def add_index_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 index ACTION`` (build retrieval indexes)."""
    index = subparsers.add_parser("index", help="build retrieval indexes")
    add_index_commands(index.add_subparsers(dest="index_command", required=True, metavar="ACTION"))
    return index


def add_serve_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 serve SERVER``: retrieval, websearch, webshop, llm."""
    serve = subparsers.add_parser(
        "serve", help="run a server: retrieval, websearch (Serper), webshop or an LLM (OpenAI API)"
    )
    serve_sub = serve.add_subparsers(dest="serve_command", required=True, metavar="SERVER")
    add_serve_command(serve_sub)
    add_serve_websearch_command(serve_sub)
    add_serve_webshop_command(serve_sub)
    add_serve_llm_command(serve_sub)
    return serve


def add_server_commands(subparsers: Any) -> None:
    """Register ``corpus``, ``index`` and ``serve``, in that order."""
    add_corpus_command(subparsers)
    add_index_command(subparsers)
    add_serve_commands(subparsers)


def command_parser(prog: str = "mem1") -> argparse.ArgumentParser:
    """A parser of the server commands alone (``corpus``, ``index``, ``serve``), as ``mem1`` mounts them."""
    parser = argparse.ArgumentParser(prog=prog)
    add_server_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def run_command(argv: Sequence[str]) -> int:
    """Run one server command, e.g. ``["serve", "retrieval", "--index", "idx/"]`` (blocks while a server runs)."""
    args = command_parser().parse_args(list(argv))
    return int(args.func(args) or 0)
