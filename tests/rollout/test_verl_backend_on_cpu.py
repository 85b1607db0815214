"""``VerlServerBackend`` against verl's server-client interface, decoded by the tiny model on CPU.

No verl rollout server runs on CPU, so the client is a stand-in (``tests/support.py``) with the real
``LLMServerClient.generate`` signature (checked against verl's source) that treats the sampling params exactly as
verl's vLLM replica does (``vLLMHttpServer.generate``) and returns verl's real ``TokenOutput``, computed by
``HFLocalBackend``. Where verl's ``LLMServerClient`` itself imports, it is driven too, with its load balancer replaced.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
from pathlib import Path

import pytest
from verl.workers.rollout.replica import TokenOutput

from tests.support import FakeServerClient, FakeVllmReplica, recompute_logprobs, vllm_replica_params
from verl_mem1.rollout.backends.base import Generation, SamplingConfig
from verl_mem1.rollout.backends.verl_server import VerlServerBackend

PROMPT = "The capital of France is"
# vllm.SamplingParams fields (vLLM 0.8 - 0.11), used when vllm itself is not importable.
VLLM_SAMPLING_PARAM_FIELDS = {
    "n",
    "best_of",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "max_tokens",
    "min_tokens",
    "logprobs",
    "prompt_logprobs",
    "detokenize",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "include_stop_str_in_output",
    "logits_processors",
    "truncate_prompt_tokens",
    "output_kind",
    "guided_decoding",
    "logit_bias",
    "allowed_token_ids",
    "extra_args",
    "bad_words",
}


@pytest.fixture(scope="module")
def backend(tiny_backend):
    """A fresh backend over the session's tiny model (own queue, generator and EOS set)."""
    from verl_mem1.rollout.backends.hf_local import HFLocalBackend

    return HFLocalBackend(model=tiny_backend.model, tokenizer=tiny_backend.tokenizer, max_batch_size=8, seed=0)


@pytest.fixture(scope="module")
def prompt_ids(backend):
    return backend.tokenizer.encode(PROMPT, add_special_tokens=False)


def run(adapter: VerlServerBackend, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
    return asyncio.run(adapter.generate(prompt_ids, sampling))


def first_fresh_piece(tokenizer, ids: list[int], start: int) -> tuple[int, str] | None:
    """``(k, text of ids[k])`` for the first ``k >= start`` whose text first occurs where token k starts."""
    text, at = tokenizer.decode(ids), 0
    for k, t in enumerate(ids):
        piece = tokenizer.decode([t])
        if k >= start and piece.strip() and "\ufffd" not in piece and text.find(piece) == at:
            return k, piece
        at += len(piece)
    return None


def test_fake_client_has_verls_generate_signature():
    """The stand-in's ``generate`` takes what verl's ``LLMServerClient.generate`` takes (read from its source)."""
    spec = importlib.util.find_spec("verl.workers.rollout.llm_server")
    assert spec is not None and spec.origin is not None, "verl 0.9 ships verl.workers.rollout.llm_server"
    tree = ast.parse(Path(spec.origin).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LLMServerClient")
    fn = next(n for n in cls.body if isinstance(n, ast.AsyncFunctionDef) and n.name == "generate")
    real_positional = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    real_kwonly = [a.arg for a in fn.args.kwonlyargs]
    ours = inspect.signature(FakeServerClient.generate).parameters
    assert real_positional == [n for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert real_kwonly == [n for n, p in ours.items() if p.kind is p.KEYWORD_ONLY]
    assert {"prompt_ids", "sampling_params"} <= set(real_kwonly) and fn.args.kwarg is not None


def test_sampling_params_sent(backend, prompt_ids):
    client = FakeServerClient(FakeVllmReplica(backend))
    adapter = VerlServerBackend(client, eos_token_ids=backend.eos_ids)
    sampling = SamplingConfig(max_new_tokens=7, temperature=0.7, top_p=0.9, top_k=50, stop=("</query>", "</answer>"))
    gen = run(adapter, prompt_ids, sampling)
    ((request_id, sent_prompt, params),) = client.calls
    assert request_id == adapter.request_id and sent_prompt == prompt_ids
    assert params == {
        "max_tokens": 7,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 50,
        "stop": ["</query>", "</answer>"],
        "include_stop_str_in_output": True,
        "logprobs": True,
    }
    assert len(gen.token_ids) == 7 and gen.finish_reason == "length"


def test_sampling_params_are_accepted_by_vllm():
    """verl's vLLM replica pops ``max_tokens``/``logprobs`` and calls ``SamplingParams(max_tokens=..., **params)``."""
    params = VerlServerBackend.sampling_params(SamplingConfig(max_new_tokens=5, temperature=0.5, stop=("</q>",)))
    max_tokens, replica_params = vllm_replica_params(params)
    assert max_tokens == 5 and replica_params["logprobs"] == 0  # log-prob of the sampled token only
    if importlib.util.find_spec("vllm") is not None:
        from vllm import SamplingParams

        sp = SamplingParams(max_tokens=max_tokens, **replica_params)
        assert sp.stop == ["</q>"] and sp.include_stop_str_in_output and sp.logprobs == 0 and sp.max_tokens == 5
    else:
        assert set(params) == {
            "max_tokens",
            "temperature",
            "top_p",
            "top_k",
            "stop",
            "include_stop_str_in_output",
            "logprobs",
        }
        assert set(replica_params) | {"max_tokens"} <= VLLM_SAMPLING_PARAM_FIELDS


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_ids_and_logprobs_come_through(backend, prompt_ids, temperature):
    client = FakeServerClient(FakeVllmReplica(backend))
    adapter = VerlServerBackend(client, eos_token_ids=backend.eos_ids)
    gen = run(adapter, prompt_ids, SamplingConfig(max_new_tokens=10, temperature=temperature))
    (output,) = client.outputs
    assert gen.token_ids == output.token_ids and gen.logprobs == output.log_probs
    assert all(isinstance(t, int) for t in gen.token_ids) and all(isinstance(x, float) for x in gen.logprobs)
    expected = recompute_logprobs(backend.model, prompt_ids, gen.token_ids, temperature)
    assert max(abs(a - b) for a, b in zip(gen.logprobs, expected, strict=True)) <= 1e-4


def test_finish_reasons(backend, prompt_ids):
    client = FakeServerClient(FakeVllmReplica(backend))
    greedy = SamplingConfig(max_new_tokens=6, temperature=0.0)
    full = run(VerlServerBackend(client, eos_token_ids=backend.eos_ids), prompt_ids, greedy)
    assert len(full.token_ids) == 6 and full.finish_reason == "length"

    # EOS: the random model never samples a real EOS, so declare its 3rd greedy token one (server and adapter)
    eos = full.token_ids[2]
    saved = backend.eos_ids
    backend.eos_ids = {eos}
    try:
        gen = run(VerlServerBackend(client, eos_token_ids={eos}), prompt_ids, greedy)
    finally:
        backend.eos_ids = saved
    assert gen.token_ids == full.token_ids[: full.token_ids.index(eos) + 1]
    assert len(gen.token_ids) < 6 and gen.finish_reason == "eos"

    # stop string: the text of a later greedy token that first occurs where that token starts
    for prompt in (prompt_ids, *(backend.tokenizer.encode(p) for p in ("Once upon a time", "def main():"))):
        full = run(VerlServerBackend(client, eos_token_ids=backend.eos_ids), prompt, greedy)
        found = first_fresh_piece(backend.tokenizer, full.token_ids, start=1)
        if found is not None:
            break
    else:
        pytest.fail("no usable stop string in the tiny model's greedy outputs")
    k, stop = found
    stopped = SamplingConfig(max_new_tokens=6, temperature=0.0, stop=(stop,))
    for tokenizer in (None, backend.tokenizer):  # with the tokenizer, the stop string is found in the decoded tail
        gen = run(VerlServerBackend(client, eos_token_ids=backend.eos_ids, tokenizer=tokenizer), prompt, stopped)
        assert gen.token_ids == full.token_ids[: k + 1] and len(gen.token_ids) < 6 and gen.finish_reason == "stop"
    assert client.calls[-1][2]["stop"] == [stop]


def test_a_generation_the_replica_capped_is_a_length_stop(backend, prompt_ids):
    """verl's vLLM server caps max_tokens at the context left and reports vLLM's "length" as "completed": a generation
    cut short by the cap, with stop strings set that it never wrote, is a length stop, not a stop-string one."""
    client = FakeServerClient(FakeVllmReplica(backend, max_model_len=len(prompt_ids) + 3))
    never = SamplingConfig(max_new_tokens=6, temperature=0.0, stop=("</answer>", "</query>"))
    capped = run(
        VerlServerBackend(client, eos_token_ids=backend.eos_ids, tokenizer=backend.tokenizer), prompt_ids, never
    )
    assert len(capped.token_ids) == 3 and client.outputs[-1].stop_reason == "completed"
    assert capped.finish_reason == "length"
    assert run(VerlServerBackend(client, eos_token_ids=backend.eos_ids), prompt_ids, never).finish_reason == "stop"


def test_request_id_is_sticky_across_turns(backend, prompt_ids):
    client = FakeServerClient(FakeVllmReplica(backend))
    adapter = VerlServerBackend(client, eos_token_ids=backend.eos_ids)
    context = list(prompt_ids)
    for _turn in range(3):  # a multi-turn episode: each turn's prompt extends the last
        gen = run(adapter, context, SamplingConfig(max_new_tokens=3))
        context += gen.token_ids + [198]
    assert [c[0] for c in client.calls] == [adapter.request_id] * 3
    assert [len(c[1]) for c in client.calls] == [len(prompt_ids), len(prompt_ids) + 4, len(prompt_ids) + 8]
    other = VerlServerBackend(client)
    assert other.request_id != adapter.request_id  # one id per episode
    assert VerlServerBackend(client, request_id="episode-7").request_id == "episode-7"


def test_missing_logprobs_is_a_clear_error(prompt_ids):
    class NoLogprobsClient:
        async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
            return TokenOutput(token_ids=[1, 2, 3], log_probs=None, stop_reason="completed")

    with pytest.raises(RuntimeError, match="calculate_log_probs"):
        run(VerlServerBackend(NoLogprobsClient()), prompt_ids, SamplingConfig(max_new_tokens=3))


def test_with_verls_own_server_client(backend, prompt_ids):
    """verl's real ``LLMServerClient.generate``, with its Ray load balancer replaced by one in-process replica."""
    import verl.workers.rollout.llm_server as llm_server
    from omegaconf import OmegaConf

    replica = FakeVllmReplica(backend)
    acquired: list[str] = []

    class _Handle:  # a Ray actor handle's ``.generate.remote(...)``
        class generate:  # noqa: N801
            remote = staticmethod(replica.generate)

    class InProcessClient(llm_server.LLMServerClient):
        async def _acquire_server(self, request_id, **extra):
            acquired.append(request_id)
            return "replica-0", _Handle

        def _release_server(self, server_id, request_id=None):
            pass

    config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"name": "vllm", "full_determinism": False}}})
    adapter = VerlServerBackend(InProcessClient(config), eos_token_ids=backend.eos_ids)
    gens = [run(adapter, prompt_ids, SamplingConfig(max_new_tokens=4, temperature=1.0)) for _ in range(2)]
    assert all(len(g.token_ids) == 4 and g.finish_reason == "length" for g in gens)
    assert acquired == [adapter.request_id] * 2  # sticky routing key
    assert len(set(replica.request_ids)) == 2  # verl gives each turn a fresh vLLM request id
    expected = recompute_logprobs(backend.model, prompt_ids, gens[0].token_ids, 1.0)
    assert max(abs(a - b) for a, b in zip(gens[0].logprobs, expected, strict=True)) <= 1e-4
