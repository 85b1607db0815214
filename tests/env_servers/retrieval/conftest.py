"""Retrieval fixtures on top of tests/conftest.py (corpus, BM25 index, live server): dense indexes.

Everything is real (bm25s, faiss, transformers, uvicorn on loopback); the expensive pieces are built
once per session and shared by the retrieval tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from env_servers.retrieval.corpus import default_hotpotqa_sources
from env_servers.retrieval.index import build_index

SMALL_CORPUS_DOCS = 200


def _wait_healthy(base_url: str, timeout: float = 30.0) -> dict:
    """Poll GET /health until the server answers ok."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(f"{base_url}/health", timeout=2.0)
            if r.status_code == 200 and r.json().get("status") == "ok":
                return r.json()
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{base_url}/health did not answer ok within {timeout}s")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def wait_healthy() -> Callable[..., dict]:
    """``wait_healthy(base_url)``: block until the server's /health says ok; returns the health body."""
    return _wait_healthy


@pytest.fixture(scope="session")
def dev_questions() -> list[dict]:
    with open(default_hotpotqa_sources()[1], encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture()
def client(bm25_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bm25_server, timeout=30.0) as c:
        yield c


@pytest.fixture(scope="session")
def small_corpus(hotpot_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first SMALL_CORPUS_DOCS paragraphs, for the (slower) dense encoder."""
    out = tmp_path_factory.mktemp("small") / "small.jsonl"
    with open(hotpot_corpus, encoding="utf-8") as f:
        lines = [next(f) for _ in range(SMALL_CORPUS_DOCS)]
    out.write_text("".join(lines), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_dir: Path) -> Path:
    """The session's tiny Qwen2 (real Qwen2.5 tokenizer) doubles as a dense encoder (loaded via AutoModel)."""
    return tiny_model_dir


@pytest.fixture(scope="session")
def dense_indexes(small_corpus: Path, tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dense")
    return {
        kind: build_index(
            small_corpus, root / kind, str(tiny_encoder), faiss_index=kind, max_length=64, show_progress=False
        )
        for kind in ("flat", "hnsw")
    }


@pytest.fixture(scope="session")
def tiny_bert_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT (the architecture of E5, BGE and MiniLM) with the bundled Qwen2.5 tokenizer."""
    from verl_mem1.tiny_model import build_random_bert

    return build_random_bert(tmp_path_factory.mktemp("tiny-bert"))
