"""Session fixtures shared across the suite: the tiny model and a retrieval server over HotpotQA (built once)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from verl_mem1.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir):
    from verl_mem1.rollout.backends.hf_local import HFLocalBackend

    return HFLocalBackend(tiny_model_dir, seed=0, max_batch_size=8)


@pytest.fixture(scope="session")
def hotpot_corpus(tmp_path_factory):
    """The mini Wikipedia corpus built from the bundled HotpotQA paragraphs."""
    from env_servers.retrieval.corpus import build_hotpotqa_corpus

    out = tmp_path_factory.mktemp("corpus") / "hotpotqa.jsonl"
    build_hotpotqa_corpus(None, out)
    return out


@pytest.fixture(scope="session")
def bm25_index(hotpot_corpus, tmp_path_factory):
    from env_servers.retrieval.index import build_index

    return build_index(hotpot_corpus, tmp_path_factory.mktemp("bm25"), "bm25", show_progress=False)


@pytest.fixture(scope="session")
def bm25_retriever(bm25_index):
    from env_servers.retrieval.index import load_retriever

    return load_retriever(bm25_index)


@pytest.fixture(scope="session")
def bm25_server(bm25_retriever):
    """Base URL of a real uvicorn retrieval server (background thread, loopback) over the BM25 index."""
    from env_servers.background import BackgroundServer
    from env_servers.retrieval.server import create_app

    with BackgroundServer(create_app(bm25_retriever)) as server:
        yield server.url


@pytest.fixture(scope="session")
def retrieval_url(bm25_server):
    return bm25_server


@pytest.fixture(scope="session")
def recompute_logprobs():
    from tests.support import recompute_logprobs

    return recompute_logprobs


@pytest.fixture(scope="session")
def webshop_shop():
    """The bundled 100-product WebShop (501 synthetic goals) as the server runs it: spaCy's noun tagger (the webshop
    extra is installed with the tests) and WebShop's option rule."""
    from env_servers.webshop.data import load_catalog
    from env_servers.webshop.shop import Shop

    shop = Shop(load_catalog())
    assert shop.noun_tagger.startswith("spacy:"), "install the webshop extra: pip install -e '.[test,webshop]'"
    return shop


@pytest.fixture(scope="session")
def webshop_url(webshop_shop):
    """Base URL of a real uvicorn WebShop server (background thread, loopback) over the bundled shop."""
    from env_servers.background import BackgroundServer
    from env_servers.webshop.server import create_app

    with BackgroundServer(create_app(webshop_shop)) as server:
        yield server.url


@pytest.fixture(scope="module")
def served(tiny_backend):
    """A fresh backend over the session's tiny model (own queue, batch log and generator) and its OpenAI-compatible
    server (``env_servers/llm``): ``(backend, url)``."""
    from env_servers.background import BackgroundServer
    from env_servers.llm.server import create_app
    from tests.support import LLM_MODEL_NAME
    from verl_mem1.rollout.backends.hf_local import HFLocalBackend

    backend = HFLocalBackend(model=tiny_backend.model, tokenizer=tiny_backend.tokenizer, max_batch_size=8, seed=0)
    with BackgroundServer(create_app(backend, LLM_MODEL_NAME)) as server:
        yield backend, server.url


@pytest.fixture(scope="module")
def prompt_ids(served):
    from tests.support import LLM_PROMPT

    backend, _ = served
    return backend.tokenizer.encode(LLM_PROMPT, add_special_tokens=False)
