"""Training-time log-probs equal the rollout's, on real episodes, for every backend (the acceptance test)."""

from __future__ import annotations

import pytest
import torch

from tests.training.conftest import MAX_TURNS, POLICIES, TEMPERATURES
from tests.training.records import make_record, mem1_record
from verl_mem1.training import (
    pack_batch,
    pack_episode,
    packed_logprobs,
    packed_logprobs_and_entropy,
    packed_model_call,
    packed_token_count,
    packed_values,
    per_turn_logprobs,
    per_turn_logprobs_and_entropy,
    per_turn_token_count,
)

TOLERANCE = 1e-4
BACKENDS = ("dense", "flex", "segmented", "per_turn")  # flex: eager (compiled: test_attention_on_cpu.py)


def _score(model, record, backend):
    if backend == "per_turn":
        return per_turn_logprobs(model, record)
    return packed_logprobs(model, pack_episode(record), backend=backend, compile_flex=False)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("policy", POLICIES)
def test_training_logprobs_equal_rollout_logprobs(policy, temperature, episodes_by_config, training_model):
    records, _ = episodes_by_config[(policy, temperature)]
    assert records and all(len(r.turns) >= MAX_TURNS for r in records), "episodes of 8+ turns"
    assert all(r.sampling["temperature"] == temperature for r in records)
    worst = {}
    with torch.no_grad():
        for backend in BACKENDS:
            deltas = []
            for record in records:
                recorded = torch.tensor([lp for t in record.turns for lp in t.logprobs], dtype=torch.float64)
                got = _score(training_model, record, backend).double()
                assert got.shape == recorded.shape, "every generated token is scored, in turn order"
                deltas.append((got - recorded).abs())
            worst[backend] = float(torch.cat(deltas).max())
    assert all(v <= TOLERANCE for v in worst.values()), worst
    if policy != "full":  # packing saves compute when contexts are rebuilt; full context is the worst case
        assert sum(packed_token_count(r) for r in records) < sum(per_turn_token_count(r) for r in records)


def test_packing_pays_off_for_mem1(episodes_by_config):
    records, _ = episodes_by_config[("mem1", 1.0)]
    for record in records:
        # the prompt is computed once instead of once per turn
        p = len(record.prompt_ids)
        assert per_turn_token_count(record) - packed_token_count(record) == p * (len(record.turns) - 1)


def test_one_turn_packed_sample_is_the_plain_causal_forward(training_model):
    record = make_record(list(range(1000, 1030)), [(list(range(1000, 1030)), list(range(2000, 2010)), [0.0] * 10)])
    sample = pack_episode(record)
    plain_ids = torch.tensor(record.turns[0].context_ids + record.turns[0].generated_ids)
    assert torch.equal(sample.input_ids, plain_ids)
    assert torch.equal(sample.position_ids, torch.arange(plain_ids.numel()))
    with torch.no_grad():
        plain = training_model(input_ids=plain_ids[None]).logits[0]
        for backend in ("dense", "flex", "segmented"):
            packed = packed_model_call(
                training_model,
                sample.input_ids,
                sample.position_ids,
                sample.segment_ids,
                backend=backend,
                compile_flex=False,
            ).logits[0]
            assert (packed - plain).abs().max() < 1e-5, backend


def test_gradients_match_the_per_turn_forward(tiny_model_dir):
    """Under autograd on CPU, flex runs the segmented kernel; its gradients equal the per-turn ones."""
    from transformers import AutoModelForCausalLM

    record = mem1_record(24, 4, 6, 10, seed=5, temperature=0.7)

    def grads(fn):
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
        model.train()
        fn(model).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    packed = grads(lambda m: packed_logprobs(m, pack_episode(record), backend="flex"))
    dense = grads(lambda m: packed_logprobs(m, pack_episode(record), backend="dense"))
    per_turn = grads(lambda m: per_turn_logprobs(m, record))
    assert packed.keys() == per_turn.keys() and len(packed) > 10
    for name in per_turn:
        scale = per_turn[name].abs().max().item() + 1e-6
        assert (packed[name] - per_turn[name]).abs().max().item() / scale < 1e-4, name
        assert (dense[name] - per_turn[name]).abs().max().item() / scale < 1e-4, name


def test_entropy_and_temperature_override(training_model):
    record = mem1_record(20, 3, 5, 8, seed=6, temperature=0.7)
    sample = pack_episode(record)
    with torch.no_grad():
        lp, ent = packed_logprobs_and_entropy(training_model, sample, backend="segmented")
        ref_lp, ref_ent = per_turn_logprobs_and_entropy(training_model, record)
        assert (lp - ref_lp).abs().max() < 1e-5 and (ent - ref_ent).abs().max() < 1e-4
        assert (ent > 0).all()
        at_one = packed_logprobs(training_model, sample, backend="segmented", temperature=1.0)
        assert (at_one - per_turn_logprobs(training_model, record, temperature=1.0)).abs().max() < 1e-5
        assert (at_one - lp).abs().max() > 1e-3, "the recorded temperature (0.7) is used unless overridden"


def test_batched_packing_equals_one_episode_at_a_time(training_model):
    records = [mem1_record(30, 4, 6, 12, seed=7), mem1_record(18, 3, 5, 9, seed=8, temperature=0.7)]
    batch = pack_batch(records)
    with torch.no_grad():
        singles = torch.cat([per_turn_logprobs(training_model, r) for r in records])
        for backend in ("dense", "flex", "segmented"):
            got = packed_logprobs(training_model, batch, backend=backend, compile_flex=False)
            assert (got - singles).abs().max() < 1e-5, backend
    assert [t.numel() for t in torch.split(got, batch.generated_per_episode())] == [24, 15]


def test_critic_values_at_predictor_positions(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(str(tiny_model_dir), num_labels=1)
    torch.manual_seed(0)
    critic = AutoModelForTokenClassification.from_config(config).eval()
    record = mem1_record(20, 3, 5, 8, seed=9)
    sample = pack_episode(record)
    with torch.no_grad():
        expected = []
        for turn in record.turns:
            ids = torch.tensor(turn.context_ids + turn.generated_ids)
            values = critic(input_ids=ids[None]).logits[0, :, 0]
            c = len(turn.context_ids)
            expected.append(values[c - 1 : ids.numel() - 1])  # the value of token k sits at position k - 1
        expected = torch.cat(expected)
        for backend in ("dense", "flex", "segmented"):
            got = packed_values(critic, sample, backend, compile_flex=False)
            assert got.shape == expected.shape and (got - expected).abs().max() < 1e-5, backend


def test_no_vocabulary_sized_tensor_over_the_whole_row(training_model, monkeypatch):
    """Logits exist for the generated tokens only (N x V via logits_to_keep), or a chunk of them at a time."""
    from verl_mem1.training import head

    record = mem1_record(60, 3, 4, 30, seed=10, temperature=0.7)
    sample = pack_episode(record)
    shapes = []
    hook = training_model.lm_head.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape)))
    try:
        with torch.no_grad():
            full = packed_logprobs(training_model, sample, backend="segmented", logits_chunk=None)
    finally:
        hook.remove()
    assert shapes == [(1, sample.num_generated, training_model.config.vocab_size)]
    assert sample.num_generated < sample.length / 5

    chunks = []
    original = head.head_logprobs

    def spy(hidden, *args):
        chunks.append(hidden.shape[0])
        return original(hidden, *args)

    monkeypatch.setattr(head, "head_logprobs", spy)
    with torch.no_grad():
        chunked = packed_logprobs(training_model, sample, backend="segmented", logits_chunk=5)
    assert chunks == [5, 5, 2] and (chunked - full).abs().max() < 1e-6


def test_chunked_head_gradients_equal_the_unchunked_ones(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    record = mem1_record(20, 3, 6, 8, seed=11, temperature=0.7)

    def grads(chunk):
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).train()
        lp, ent = packed_logprobs_and_entropy(model, pack_episode(record), backend="segmented", logits_chunk=chunk)
        (lp.sum() + 0.1 * ent.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    chunked, plain = grads(4), grads(None)
    assert chunked.keys() == plain.keys()
    for name, g in plain.items():
        assert (chunked[name] - g).abs().max().item() <= 1e-5 * (g.abs().max().item() + 1e-6), name
