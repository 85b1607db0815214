"""The bundled environments, served on loopback for single-machine runs (``mem1 train``, ``mem1 demo``,
``mem1 rollout``/``eval`` with an ``auto`` URL): the HotpotQA BM25 retriever (corpus and index built once into a
cache folder) and the 100-product WebShop. One place starts them, so every command serves the same thing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from env_servers.background import BackgroundServer

ENVS = ("retrieval", "webshop")


def build_bundled_index(cache_dir: Path, *, progress: bool = False) -> Path:
    """Build (once) the HotpotQA mini-corpus from the bundled questions' paragraphs and its BM25 index in
    ``cache_dir``; returns the index folder."""
    from env_servers.retrieval.corpus import build_hotpotqa_corpus
    from env_servers.retrieval.index import build_index

    cache_dir = Path(cache_dir)
    index_dir = cache_dir / "index-bm25"
    if not (index_dir / "meta.json").is_file():
        corpus = cache_dir / "hotpotqa-corpus.jsonl"
        n = build_hotpotqa_corpus(None, corpus)
        print(f"built the HotpotQA mini-corpus ({n} paragraphs) in {cache_dir}; indexing it with BM25")
        build_index(corpus, index_dir, encoder="bm25", show_progress=progress)
    return index_dir


def bundled_retriever_server(cache_dir: Path, *, progress: bool = False) -> BackgroundServer:
    """A loopback retrieval server (not started) over the bundled HotpotQA BM25 index."""
    from env_servers.retrieval.index import load_retriever
    from env_servers.retrieval.server import create_app

    return BackgroundServer(create_app(load_retriever(build_bundled_index(cache_dir, progress=progress))))


def serve_bundled(env: str, stack: contextlib.ExitStack, cache_dir: Path, *, progress: bool = False) -> str:
    """Start the bundled server for ``env`` (``retrieval`` or ``webshop``) for the life of ``stack``; its URL."""
    if env not in ENVS:
        raise ValueError(f"no bundled environment {env!r}; choose one of {', '.join(ENVS)}")
    if env == "webshop":
        from env_servers.webshop.server import bundled_shop_server

        server = stack.enter_context(bundled_shop_server())
        print(f"serving the bundled WebShop on {server.url}")
    else:
        server = stack.enter_context(bundled_retriever_server(cache_dir, progress=progress))
        print(f"serving the bundled HotpotQA BM25 retriever on {server.url}")
    return server.url
