"""The ``mem1_hf`` rollout: verl's vLLM-style sampling params honoured, exact log-probs, weights replaced by the
trainer's, bad requests refused clearly (the server object itself; the Ray wiring runs in the main_ppo e2e test)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from verl_mem1.rollout.backends.base import SamplingConfig
from verl_mem1.training.verl_plugin.cpu_rollout import HFRolloutServer, sampling_from_params


def test_sampling_params_as_verl_sends_them_on_cpu():
    params = {"max_tokens": 50, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "stop": ["</query>"], "logprobs": True}
    assert sampling_from_params(params, max_tokens_left=100) == SamplingConfig(
        max_new_tokens=50, temperature=0.7, top_p=0.9, top_k=-1, stop=("</query>",)
    )
    assert sampling_from_params({"max_tokens": 50, "stop": "x"}, max_tokens_left=20).max_new_tokens == 20
    assert sampling_from_params({"stop": "x"}, max_tokens_left=20).stop == ("x",)
    with pytest.raises(ValueError, match="no room to generate"):
        sampling_from_params({}, max_tokens_left=0)
    with pytest.raises(ValueError, match="top_p"):
        sampling_from_params({"top_p": 0}, max_tokens_left=5)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    config = {"dtype": "float32", "max_num_seqs": 4, "prompt_length": 64, "response_length": 32}
    return HFRolloutServer(config, {"local_path": str(tiny_model_dir)}, replica_rank=0)


def _greedy(server, prompt, n=6):
    params = {"max_tokens": n, "temperature": 0.0}
    return asyncio.run(server.generate(prompt_ids=prompt, sampling_params=params, request_id="r"))


def test_generation_and_log_probs_are_the_models_on_cpu(server, recompute_logprobs):
    prompt = [1, 2, 3, 4, 5]
    out = _greedy(server, prompt)
    assert len(out.token_ids) == len(out.log_probs) == 6
    assert out.stop_reason == "completed"
    expected = recompute_logprobs(server.backend.model, prompt, out.token_ids, 0.0)
    assert torch.allclose(torch.tensor(out.log_probs), torch.as_tensor(expected, dtype=torch.float32), atol=1e-4)


def test_context_budget_and_text_only_on_cpu(server):
    out = _greedy(server, list(range(1, 90)), n=50)  # 96 - 89 = 7 tokens of context left
    assert len(out.token_ids) <= 7
    with pytest.raises(ValueError, match="text only"):
        asyncio.run(server.generate(prompt_ids=[1, 2], sampling_params={}, request_id="r", image_data=[object()]))


def test_update_weights_replaces_the_model_on_cpu(server, tiny_model_dir):
    prompt = [7, 8, 9]
    before = _greedy(server, prompt)
    original = {k: v.clone() for k, v in server.backend.model.state_dict().items()}
    shifted = {k: v + 0.5 * torch.randn_like(v) if v.is_floating_point() else v for k, v in original.items()}
    try:
        assert asyncio.run(server.update_weights(shifted, global_steps=3)) == len(shifted)
        after = _greedy(server, prompt)
        assert after.extra_fields["global_steps"] == 3
        assert after.log_probs != before.log_probs
        with pytest.raises(ValueError, match="does not have"):
            asyncio.run(server.update_weights({"not.a.weight": torch.zeros(1)}))
        partial = dict(list(original.items())[:1])
        with pytest.raises(ValueError, match="left rollout weights unset"):
            asyncio.run(server.update_weights(partial))
        assert _greedy(server, prompt).log_probs == after.log_probs  # refused updates changed nothing
    finally:
        asyncio.run(server.update_weights(original, global_steps=0))
    assert _greedy(server, prompt).token_ids == before.token_ids


def test_a_weight_update_drops_the_cached_prompt_kv_on_cpu(server, recompute_logprobs):
    """A prompt long enough for the prefix cache: after an update its log-probs are the new weights', not a mix
    with KV the old weights computed."""
    prompt = list(range(10, 50))
    _greedy(server, prompt)  # cached under the current weights
    original = {k: v.clone() for k, v in server.backend.model.state_dict().items()}
    shifted = {k: v + 0.5 * torch.randn_like(v) if v.is_floating_point() else v for k, v in original.items()}
    try:
        asyncio.run(server.update_weights(shifted, global_steps=1))
        hits = server.backend.prefix_cache.hit_tokens
        out = _greedy(server, prompt)
        assert server.backend.prefix_cache.hit_tokens == hits  # nothing left to reuse
        expected = recompute_logprobs(server.backend.model, prompt, out.token_ids, 0.0)
        assert torch.allclose(torch.tensor(out.log_probs), torch.as_tensor(expected, dtype=torch.float32), atol=1e-4)
    finally:
        asyncio.run(server.update_weights(original, global_steps=0))
