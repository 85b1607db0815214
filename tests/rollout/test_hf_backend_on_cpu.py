"""The local transformers backend: batching, exact log-probs, stopping, truncated sampling."""

from __future__ import annotations

import asyncio

import pytest
import torch

from verl_mem1.rollout.backends.base import Generation, SamplingConfig
from verl_mem1.rollout.backends.hf_local import HFLocalBackend, PrefixCache, _truncate, use_grouped_decode


def _prompts(tokenizer, n: int) -> list[list[int]]:
    # different lengths, so the batch is left-padded
    return [tokenizer.encode("Question: " + "which city hosted it? " * (i + 1)) for i in range(n)]


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_concurrent_calls_batch_and_logprobs_match_unpadded_forward(tiny_backend, recompute_logprobs, temperature):
    prompts = _prompts(tiny_backend.tokenizer, 5)
    sampling = SamplingConfig(max_new_tokens=10, temperature=temperature)
    before = len(tiny_backend.batch_sizes)

    async def go():
        return await asyncio.gather(*(tiny_backend.generate(p, sampling) for p in prompts))

    results = asyncio.run(go())
    assert max(tiny_backend.batch_sizes[before:]) > 1
    for prompt, gen in zip(prompts, results, strict=True):
        assert len(gen.token_ids) == 10 and gen.finish_reason == "length"
        again = recompute_logprobs(tiny_backend.model, prompt, gen.token_ids, temperature)
        assert max(abs(a - b) for a, b in zip(again, gen.logprobs, strict=True)) <= 1e-4


def test_rows_that_finish_leave_the_batch_and_the_rest_decode_as_alone(tiny_backend, recompute_logprobs):
    """Budgets 2..12: rows leave the running batch at different steps; every row equals its own unbatched greedy
    generation, and its log-probs its unpadded forward."""
    prompts = _prompts(tiny_backend.tokenizer, 4)
    budgets = [12, 2, 7, 4]
    batched = tiny_backend.generate_batch(
        [(p, SamplingConfig(max_new_tokens=b, temperature=0.0)) for p, b in zip(prompts, budgets, strict=True)]
    )
    for prompt, budget, gen in zip(prompts, budgets, batched, strict=True):
        (alone,) = tiny_backend.generate_batch([(prompt, SamplingConfig(max_new_tokens=budget, temperature=0.0))])
        assert len(gen.token_ids) == budget and gen.token_ids == alone.token_ids
        again = recompute_logprobs(tiny_backend.model, prompt, gen.token_ids, 1.0)
        assert max(abs(a - b) for a, b in zip(again, gen.logprobs, strict=True)) <= 1e-4


def _long_row_then_a_short_call(backend: HFLocalBackend, long_prompt, short_prompt, long, short):
    """Start the long generation, request the short one five decode steps later; both generations and whether the
    long one had finished when the short one returned."""

    async def go():
        first = asyncio.ensure_future(backend.generate(long_prompt, long))
        while backend.decode_steps < 5:
            await asyncio.sleep(0.001)
        second = await backend.generate(short_prompt, short)
        finished_first = first.done()
        return await first, second, finished_first

    return asyncio.run(go())


def test_a_call_that_arrives_mid_batch_joins_it_and_returns_before_the_longer_row(tiny_model_dir, recompute_logprobs):
    """Continuous batching: a turn requested while another row decodes is admitted at the next step (both rows in one
    batch), returns as soon as its own budget is spent, and equals its unbatched greedy generation; the longer row too.
    Static batching (``continuous=False``, the benchmark's comparison) queues it behind the running batch."""
    backend = HFLocalBackend(tiny_model_dir, seed=0, prefix_cache_tokens=0)
    long_prompt, short_prompt = _prompts(backend.tokenizer, 2)
    long, short = SamplingConfig(max_new_tokens=40, temperature=0.0), SamplingConfig(max_new_tokens=3, temperature=0.0)
    first, second, finished_first = _long_row_then_a_short_call(backend, long_prompt, short_prompt, long, short)
    assert not finished_first  # the long row was still decoding when the short one returned
    assert backend.batch_sizes == [1, 2]  # admitted into the running batch, not queued behind it
    for prompt, sampling, gen in ((long_prompt, long, first), (short_prompt, short, second)):
        (alone,) = backend.generate_batch([(prompt, sampling)])
        assert gen.token_ids == alone.token_ids and len(gen.token_ids) == sampling.max_new_tokens
        again = recompute_logprobs(backend.model, prompt, gen.token_ids, 1.0)
        assert max(abs(a - b) for a, b in zip(again, gen.logprobs, strict=True)) <= 1e-4

    static = HFLocalBackend(model=backend.model, tokenizer=backend.tokenizer, continuous=False)
    assert _long_row_then_a_short_call(static, long_prompt, short_prompt, long, short)[2]
    assert static.batch_sizes == [1, 1]


def test_the_cache_appends_in_place_and_regrows_past_its_spare_columns(tiny_model_dir, recompute_logprobs, monkeypatch):
    """With 3 spare columns a row, every row outgrows its buffer several times, rows join mid-batch and leave (the
    leading padding dropped): every sampled token's log-prob still equals a plain forward of prompt + tokens."""
    from verl_mem1.rollout.backends import hf_local

    monkeypatch.setattr(hf_local, "_SPARE_COLUMNS", 3)
    backend = HFLocalBackend(tiny_model_dir, seed=3, prefix_cache_tokens=0)
    prompts = _prompts(backend.tokenizer, 4)[::-1]  # the longest first, and first to leave: its padding is dropped
    budgets = [12, 20, 14, 11]

    async def go():
        first = [asyncio.ensure_future(backend.generate(p, SamplingConfig(max_new_tokens=b))) for p, b in
                 zip(prompts[:2], budgets[:2], strict=True)]  # fmt: skip
        while backend.decode_steps < 4:
            await asyncio.sleep(0.001)
        later = [backend.generate(p, SamplingConfig(max_new_tokens=b)) for p, b in zip(prompts[2:], budgets[2:],
                 strict=True)]  # fmt: skip
        return await asyncio.gather(*first, *later)

    generations = asyncio.run(go())
    assert backend.batch_sizes[0] == 2 and max(backend.batch_sizes) == 4  # the later rows joined the running batch
    assert max(len(g.token_ids) for g in generations) > 3 * 3
    for prompt, gen in zip(prompts, generations, strict=True):
        again = recompute_logprobs(backend.model, prompt, gen.token_ids, 1.0)
        assert max(abs(a - b) for a, b in zip(again, gen.logprobs, strict=True)) <= 1e-4


def test_seeded_sampling_is_reproducible_and_stops_on_a_stop_string(tiny_backend):
    def fresh():  # same weights, fresh generator with a fixed seed
        return HFLocalBackend(model=tiny_backend.model, tokenizer=tiny_backend.tokenizer, seed=7)

    tokenizer = tiny_backend.tokenizer
    prompt = _prompts(tokenizer, 1)[0]
    free = fresh().generate_batch([(prompt, SamplingConfig(max_new_tokens=24))])[0]
    assert free.token_ids == fresh().generate_batch([(prompt, SamplingConfig(max_new_tokens=24))])[0].token_ids
    text = tokenizer.decode(free.token_ids)
    # a string the model does produce, first seen around token 12 (the random model never writes </query>)
    for n_tokens in range(10, 20):
        cut = len(tokenizer.decode(free.token_ids[:n_tokens]))
        stop = text[cut - 3 : cut]
        if stop.strip() and "\ufffd" not in stop and text.find(stop) == cut - 3:
            break
    else:
        pytest.fail("no usable stop string in the sampled output")
    gen = fresh().generate_batch([(prompt, SamplingConfig(max_new_tokens=24, stop=(stop,)))])[0]
    assert gen.finish_reason == "stop"
    assert gen.token_ids == free.token_ids[: len(gen.token_ids)] and len(gen.token_ids) <= n_tokens
    assert stop in tokenizer.decode(gen.token_ids)
    assert stop not in tokenizer.decode(gen.token_ids[:-1]), "stops at the first occurrence"


def test_top_k_one_is_greedy_and_logprob_is_untruncated(tiny_backend, recompute_logprobs):
    prompt = _prompts(tiny_backend.tokenizer, 2)[1]
    greedy = tiny_backend.generate_batch([(prompt, SamplingConfig(max_new_tokens=6, temperature=0))])[0]
    top1 = tiny_backend.generate_batch([(prompt, SamplingConfig(max_new_tokens=6, temperature=0.8, top_k=1))])[0]
    assert top1.token_ids == greedy.token_ids
    # recorded log-probs are of softmax(logits / T) before truncation, so they are < 0, not log(1) = 0
    again = recompute_logprobs(tiny_backend.model, prompt, top1.token_ids, 0.8)
    assert max(abs(a - b) for a, b in zip(again, top1.logprobs, strict=True)) <= 1e-4
    assert all(lp < -1e-3 for lp in top1.logprobs)


def test_truncation_keeps_the_nucleus():
    logp = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.isinf(_truncate(logp, -1, 0.7)).tolist() == [False, False, True, True]
    assert torch.isinf(_truncate(logp, 3, 1.0)).tolist() == [False, False, False, True]
    assert torch.isinf(_truncate(logp, -1, 0.01)).tolist() == [False, True, True, True]


def test_eos_ends_generation(tiny_model_dir):
    backend = HFLocalBackend(tiny_model_dir)
    backend.eos_ids = set(range(len(backend.tokenizer)))  # every token is an end token
    gen = backend.generate_batch([([1, 2, 3], SamplingConfig(max_new_tokens=5))])[0]
    assert gen.finish_reason == "eos" and len(gen.token_ids) == 1


def test_errors_are_clear(tiny_backend, tiny_model_dir):
    with pytest.raises(ValueError, match="empty"):
        asyncio.run(tiny_backend.generate([], SamplingConfig()))
    with pytest.raises(ValueError, match="positions"):
        asyncio.run(tiny_backend.generate([1] * 40000, SamplingConfig()))
    with pytest.raises(ValueError, match="model name or path"):
        HFLocalBackend()
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(ValueError, match="log-probs"):
        Generation([1, 2], [0.0], "stop")


def _long_prompts(tokenizer, n: int) -> list[list[int]]:
    """A shared 60-token head (a task prompt), then n different tails of different lengths."""
    head = tokenizer.encode("You are a research agent with a memory. " * 6)
    return [head + tokenizer.encode(f" Question {i}: who hosted it?" * (i + 1)) for i in range(n)]


def test_prefix_cache_reuses_shared_heads_and_changes_no_token_or_log_prob(tiny_model_dir):
    cached = HFLocalBackend(tiny_model_dir, seed=0)
    plain = HFLocalBackend(model=cached.model, tokenizer=cached.tokenizer, seed=0)  # a model passed in: no cache
    assert plain.prefix_cache.max_tokens == 0 and cached.prefix_cache.max_tokens > 0
    prompts = _long_prompts(cached.tokenizer, 4)
    greedy = SamplingConfig(max_new_tokens=8, temperature=0.0)
    first = cached.generate_batch([(p, greedy) for p in prompts])
    head = len(_long_prompts(cached.tokenizer, 1)[0]) - len(cached.tokenizer.encode(" Question 0: who hosted it?"))
    assert cached.prefix_cache.hit_tokens >= 3 * (head - 1)  # rows 2-4 reuse row 1's head
    # the next turn: each context extended by its generation and an observation (the full-context policy)
    observation = cached.tokenizer.encode(" <info>Paris</info>")
    turn = [p + g.token_ids + observation for p, g in zip(prompts, first, strict=True)]
    before = cached.prefix_cache.hit_tokens
    again = cached.generate_batch([(t, greedy) for t in turn])
    assert cached.prefix_cache.hit_tokens - before >= sum(len(p) for p in prompts)
    reference = plain.generate_batch([(t, greedy) for t in turn])
    for a, b in zip(again, reference, strict=True):
        assert a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) <= 1e-5


def test_prefix_cache_group_of_one_prompt_computes_it_once(tiny_model_dir):
    backend = HFLocalBackend(tiny_model_dir, seed=0)
    prompt = _long_prompts(backend.tokenizer, 1)[0]
    backend.generate_batch([(prompt, SamplingConfig(max_new_tokens=2))] * 6)  # a GRPO group
    assert backend.prefix_cache.computed_tokens == len(prompt) + 5  # then one token per repeat, for its logits


def test_prefix_cache_keeps_recent_contexts_within_its_token_budget():
    cache = PrefixCache(max_tokens=100)
    layers = [(torch.zeros(1, 1, 40, 2), torch.zeros(1, 1, 40, 2))]
    for start in (0, 100, 200):
        cache.add(list(range(start, start + 40)), layers)
    assert cache._tokens == 80 and list(cache._entries)[0][0] == 100  # the oldest went first
    assert cache.lookup(list(range(100, 140)) + [7]) == (40, layers)
    assert cache.lookup(list(range(0, 40)))[0] == 0  # evicted
    assert cache.lookup(list(range(200, 210)))[0] == 0  # a common prefix under MIN_PREFIX_TOKENS is recomputed
    cache.add(list(range(1000)), layers)  # larger than the whole budget: not kept
    assert cache._tokens == 80
    cache.clear()
    assert cache._tokens == 0 and cache.lookup(list(range(100, 141)))[0] == 0


def test_grouped_decode_attention_equals_sdpa(tiny_model_dir):
    from verl_mem1.rollout.backends.hf_local import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query attention
    prompts = _prompts(tokenizer, 5)  # left-padded rows
    greedy = SamplingConfig(max_new_tokens=12, temperature=0.0)
    sdpa = HFLocalBackend(model=model, tokenizer=tokenizer).generate_batch([(p, greedy) for p in prompts])
    assert use_grouped_decode(model) and model.config._attn_implementation == "mem1_grouped_decode"
    assert not use_grouped_decode(model)  # only an SDPA model is switched
    grouped = HFLocalBackend(model=model, tokenizer=tokenizer).generate_batch([(p, greedy) for p in prompts])
    for a, b in zip(grouped, sdpa, strict=True):
        assert a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) <= 1e-5
