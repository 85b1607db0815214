"""Segment-group training reproduces the packed forward and its gradients exactly, in bounded groups."""

from __future__ import annotations

import pytest
import torch

from tests.training.records import mem1_record
from verl_mem1.training import pack_batch, pack_episode, packed_logprobs_and_entropy, streaming
from verl_mem1.training.hf_attention import packed_model_call
from verl_mem1.training.streaming import segment_groups, streamed_logprobs_and_entropy


def _records():
    # first turns have no context copy: their first token is predicted by the prompt's last position
    return [mem1_record(30, 5, 6, 12, seed=11), mem1_record(18, 4, 5, 9, seed=12, temperature=0.7)]


def test_segment_groups_cover_whole_segments_of_one_episode_each():
    sample = pack_batch(_records())
    groups = segment_groups(sample, 40)
    assert [prompt for prompt, _ in groups] == [(0, 30), (30 + 6 + 4 * 24, 30 + 6 + 4 * 24 + 18)]
    covered = []
    for (pa, pb), ranges in groups:
        assert all((sample.prompt_segment_ids[a:b] == sample.segment_ids[pa]).all() for a, b in ranges)
        for a, b in ranges:
            segments = sample.segment_ids[a:b].unique_consecutive()
            starts_whole = a == 0 or sample.segment_ids[a - 1] != sample.segment_ids[a]
            ends_whole = b == sample.length or sample.segment_ids[b] != sample.segment_ids[b - 1]
            assert starts_whole and ends_whole
            assert b - a <= 40 or len(segments) == 1, "only a single oversized segment may exceed the budget"
        covered += [(pa, pb), *ranges]
    assert sorted(covered)[0][0] == 0 and sum(b - a for a, b in covered) == sample.length
    # segments of 6, 24, 24, 24, 24 tokens: the first two fit in 40 together, the others one by one
    assert groups[0][1] == [(30, 60), (60, 84), (84, 108), (108, 132)]
    assert [len(r) for _, r in segment_groups(sample, 10**6)] == [1, 1]
    with pytest.raises(ValueError, match="group_tokens"):
        segment_groups(sample, 0)


@pytest.mark.parametrize("group_tokens", [1, 40, 10**6])
def test_streamed_logprobs_equal_the_packed_ones(training_model, group_tokens):
    sample = pack_batch(_records())
    with torch.no_grad():
        ref_lp, ref_ent = packed_logprobs_and_entropy(training_model, sample, backend="segmented")
        lp, ent = streamed_logprobs_and_entropy(training_model, sample, group_tokens=group_tokens)
    assert lp.shape == ref_lp.shape == (sample.num_generated,)
    assert (lp - ref_lp).abs().max() < 1e-5
    assert (ent - ref_ent).abs().max() < 1e-5
    assert (lp - sample.rollout_logprobs[sample.loss_mask.bool()]).abs().max() > 1e-2, "not the recorded zeros"


def _fresh_model(tiny_model_dir, checkpointing=False):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("checkpointing", "keep_logits"), [(False, True), (True, True), (False, False)])
def test_streamed_gradients_equal_the_packed_ones(tiny_model_dir, checkpointing, keep_logits, monkeypatch):
    """A per-token loss (weighted log-probs and entropies) back-propagated group by group gives the packed
    gradient, prompt and embeddings included: with and without gradient checkpointing, with the group's logits
    kept for backward or (over the budget) chunked and recomputed."""
    if not keep_logits:
        monkeypatch.setattr(streaming, "HEAD_KEEP_ELEMENTS", 0)
    sample = pack_batch(_records())
    weights = torch.randn(sample.num_generated, generator=torch.Generator().manual_seed(0))

    packed_model = _fresh_model(tiny_model_dir, checkpointing)
    lp, ent = packed_logprobs_and_entropy(packed_model, sample, backend="segmented")
    ((weights * lp).sum() + 0.1 * ent.sum()).backward()
    expected = _grads(packed_model)

    model = _fresh_model(tiny_model_dir, checkpointing)
    calls = []

    def group_loss(lp_g, ent_g, index):
        calls.append(index.clone())
        return (weights[index] * lp_g).sum() + 0.1 * ent_g.sum()

    got_lp, _ = streamed_logprobs_and_entropy(model, sample, group_loss, group_tokens=40)
    got = _grads(model)
    assert len(calls) > 4 and torch.equal(torch.cat(calls).sort().values, torch.arange(sample.num_generated))
    assert (got_lp - lp.detach()).abs().max() < 1e-5
    assert got.keys() == expected.keys() and "model.embed_tokens.weight" in got and len(got) > 10
    for name, grad in expected.items():
        scale = grad.abs().max().item() + 1e-6
        assert (got[name] - grad).abs().max().item() / scale < 1e-4, name


def test_prompt_gradient_reaches_the_model_through_the_shared_keys(tiny_model_dir):
    """Without step 3 (the prompt's backward) the prompt tokens' embeddings would get no gradient."""
    record = mem1_record(12, 2, 4, 5, seed=3)
    sample = pack_episode(record)
    model = _fresh_model(tiny_model_dir)
    streamed_logprobs_and_entropy(model, sample, lambda lp, ent, i: lp.sum(), group_tokens=1)
    embedding_grad = model.get_input_embeddings().weight.grad
    prompt_only = set(record.prompt_ids) - {t for turn in record.turns for t in turn.generated_ids}
    prompt_only -= {t for turn in record.turns for t in turn.observation_ids}
    assert prompt_only and all(embedding_grad[t].abs().sum() > 0 for t in prompt_only)


def test_streaming_needs_a_plain_head_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    sample = pack_episode(mem1_record(5, 2, 3, 3, seed=1))
    sample.input_ids %= 50
    with pytest.raises(TypeError, match="plain linear head"):
        streamed_logprobs_and_entropy(model, sample)


def test_prepended_keys_need_a_segment_kernel_and_a_segment_boundary(training_model):
    sample = pack_episode(mem1_record(10, 2, 4, 5, seed=2))
    ids, pos, seg = sample.input_ids, sample.position_ids, sample.segment_ids

    def keys_of(n):  # keys/values of the first n tokens, collected from a segmented forward
        collected = {}
        packed_model_call(training_model, ids[:n], pos[:n], seg[:n], backend="segmented", mem1_collect_kv=collected)
        return [collected[i] for i in range(len(collected))]

    with torch.no_grad():
        prompt = keys_of(10)
        with pytest.raises(ValueError, match="'segmented' or 'flash'"):
            packed_model_call(training_model, ids[10:], pos[10:], seg[10:], backend="dense", mem1_prefix_kv=prompt)
        # 12 prepended keys end inside segment 1 (positions 10..13): no query of that segment may be left out
        with pytest.raises(ValueError, match="segment boundary"):
            packed_model_call(training_model, ids[12:], pos[12:], seg, backend="segmented", mem1_prefix_kv=keys_of(12))
        with pytest.raises(ValueError, match="covers"):
            packed_model_call(training_model, ids[10:], pos[10:], seg[5:], backend="segmented", mem1_prefix_kv=prompt)
        # the right call reproduces the packed forward's last hidden states
        full = packed_model_call(training_model.model, ids, pos, seg, backend="segmented").last_hidden_state[0]
        with_prefix = packed_model_call(training_model.model, ids[10:], pos[10:], seg, backend="segmented",
                                        mem1_prefix_kv=prompt).last_hidden_state[0]  # fmt: skip
        assert (with_prefix - full[10:]).abs().max() < 1e-5
