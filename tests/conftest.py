"""Session fixtures shared across the suite: the tiny model and a retrieval server over HotpotQA."""

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
def hotpotqa_bm25_index(tmp_path_factory):
    from env_servers.retrieval.corpus import build_hotpotqa_corpus
    from env_servers.retrieval.index import build_index

    root = tmp_path_factory.mktemp("hotpotqa-index")
    build_hotpotqa_corpus(None, root / "corpus.jsonl")
    return build_index(root / "corpus.jsonl", root / "index", encoder="bm25", show_progress=False)


@pytest.fixture(scope="session")
def retrieval_url(hotpotqa_bm25_index):
    from env_servers.background import BackgroundServer
    from env_servers.retrieval.index import load_retriever
    from env_servers.retrieval.server import create_app

    with BackgroundServer(create_app(load_retriever(hotpotqa_bm25_index))) as server:
        yield server.url


def _recompute_logprobs(model, context_ids, generated_ids, temperature):
    """Log-probs of ``generated_ids`` after ``context_ids`` from one unpadded plain-transformers forward."""
    import torch

    ids = torch.tensor([list(context_ids) + list(generated_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
    start = len(context_ids) - 1
    return [float(logp[start + j, tok]) for j, tok in enumerate(generated_ids)]


@pytest.fixture(scope="session")
def recompute_logprobs():
    return _recompute_logprobs
