"""The packed layout (``training/layout.py``), tensor by tensor, on hand-built records."""

from __future__ import annotations

import pytest
import torch

from tests.training.records import make_record
from verl_mem1.training import (
    pack_batch,
    pack_episode,
    packed_token_count,
    per_turn_samples,
    per_turn_token_count,
)

PROMPT = [11, 12, 13]  # P = 3


def _record():
    # turn 0: context = prompt (no copy)            -> segment 1 = [g0 g1]
    # turn 1: context = prompt + [g0 g1 o0]         -> segment 2 = [g0 g1 o0 | h0 h1 h2]
    # turn 2: context = prompt + [h0 h1 h2 o1 o1']  -> segment 3 = [h0 h1 h2 o1 o1' | k0]
    return make_record(
        PROMPT,
        [
            (PROMPT, [21, 22], [-0.1, -0.2]),
            (PROMPT + [21, 22, 31], [41, 42, 43], [-0.3, -0.4, -0.5]),
            (PROMPT + [41, 42, 43, 51, 52], [61], [-0.6]),
        ],
        temperature=0.7,
        observations=[[31], [51, 52], []],
    )


def test_packed_layout_tensors():
    s = pack_episode(_record())
    assert s.prompt_len == 3 and s.temperature == 0.7
    assert s.input_ids.tolist() == [11, 12, 13, 21, 22, 21, 22, 31, 41, 42, 43, 41, 42, 43, 51, 52, 61]
    # prompt 0..P-1, every segment restarts at P
    assert s.position_ids.tolist() == [0, 1, 2, 3, 4, 3, 4, 5, 6, 7, 8, 3, 4, 5, 6, 7, 8]
    assert s.segment_ids.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3]
    assert s.loss_mask.tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    expected_lp = [0, 0, 0, -0.1, -0.2, 0, 0, 0, -0.3, -0.4, -0.5, 0, 0, 0, 0, 0, -0.6]
    assert torch.allclose(s.rollout_logprobs, torch.tensor(expected_lp))
    # first generated token of segment 1 has no earlier token in its segment: the last prompt token predicts it
    assert s.predictor_index.tolist() == [-1, -1, -1, 2, 3, -1, -1, -1, 7, 8, 9, -1, -1, -1, -1, -1, 15]
    assert s.turn_index.tolist() == [-1, -1, -1, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert s.prompt_segment_ids.tolist() == [0] * 17 and s.episode_index.tolist() == [0] * 17
    assert s.generated_positions.tolist() == [3, 4, 8, 9, 10, 16]
    assert torch.allclose(s.generated_temperatures(), torch.full((6,), 0.7))
    # every predictor sits in the generated token's segment or is the last prompt token
    for i in s.generated_positions.tolist():
        j = int(s.predictor_index[i])
        assert j == i - 1 and s.segment_ids[j] == s.segment_ids[i] or j == s.prompt_len - 1


def test_token_counts_match_the_layouts():
    record = _record()
    s = pack_episode(record)
    assert packed_token_count(record) == s.length == 3 + (0 + 2) + (3 + 3) + (5 + 1)
    assert per_turn_token_count(record) == (3 + 2) + (6 + 3) + (8 + 1)
    assert sum(t.length for t in per_turn_samples(record)) == per_turn_token_count(record)


def test_per_turn_samples_are_plain_causal_sequences():
    record = _record()
    samples = per_turn_samples(record)
    assert len(samples) == 3
    for sample, turn in zip(samples, record.turns, strict=True):
        n = len(turn.context_ids) + len(turn.generated_ids)
        assert sample.input_ids.tolist() == turn.context_ids + turn.generated_ids
        assert sample.position_ids.tolist() == list(range(n))
        assert sample.segment_ids.tolist() == [0] * n  # one segment: the MEM1 rule is plain causal
        assert sample.loss_mask.tolist() == [0] * len(turn.context_ids) + [1] * len(turn.generated_ids)
        c = len(turn.context_ids)
        assert sample.predictor_index[c:].tolist() == list(range(c - 1, n - 1))
        assert torch.allclose(sample.rollout_logprobs[c:], torch.tensor(turn.logprobs))


def test_context_must_start_with_the_prompt():
    bad = make_record(PROMPT, [(PROMPT, [21], [-0.1]), ([11, 99, 13, 21], [22], [-0.2])])
    with pytest.raises(ValueError, match="turn 1: context_ids does not start with prompt_ids"):
        pack_episode(bad)
    with pytest.raises(ValueError, match="does not start with prompt_ids"):
        per_turn_samples(bad)
    with pytest.raises(ValueError, match="log-probs"):
        pack_episode(make_record(PROMPT, [(PROMPT, [21, 22], [-0.1])]))
    with pytest.raises(ValueError, match="empty prompt_ids"):
        pack_episode(make_record([], [([], [21], [-0.1])]))


def test_turns_without_generated_tokens_are_left_out():
    record = make_record(PROMPT, [(PROMPT, [], []), (PROMPT + [5], [21], [-0.1])])
    s = pack_episode(record)
    assert s.input_ids.tolist() == [11, 12, 13, 5, 21]
    assert s.segment_ids.tolist() == [0, 0, 0, 2, 2]
    assert s.turn_index.tolist() == [-1, -1, -1, 1, 1]
    assert packed_token_count(record) == 5 and per_turn_token_count(record) == 5


def test_temperature_zero_means_logprobs_at_one():
    record = _record()
    record.sampling["temperature"] = 0.0
    assert pack_episode(record).temperature == 1.0


def test_pack_batch_keeps_episodes_apart():
    a = pack_episode(_record())
    b_record = make_record([7, 8], [([7, 8], [9], [-1.0]), ([7, 8, 9, 4], [6, 5], [-2.0, -3.0])], temperature=1.0)
    b = pack_episode(b_record)
    batch = pack_batch([a, b_record])
    assert batch.num_episodes == 2 and batch.prompt_lens == (3, 2) and batch.temperatures == (0.7, 1.0)
    assert batch.length == a.length + b.length
    assert batch.input_ids.tolist() == a.input_ids.tolist() + b.input_ids.tolist()
    assert batch.position_ids.tolist() == a.position_ids.tolist() + b.position_ids.tolist()
    # globally unique segment ids, each token knows its own episode's prompt segment
    assert batch.segment_ids.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3] + [4, 4, 5, 6, 6, 6, 6]
    assert batch.prompt_segment_ids.tolist() == [0] * 17 + [4] * 7
    b_predictors = [-1, -1, 18, -1, -1, 21, 22]  # b's first token is predicted by b's last prompt token (17 + 1)
    assert batch.predictor_index.tolist() == a.predictor_index.tolist() + b_predictors
    assert batch.generated_per_episode() == [6, 3]
    assert batch.generated_temperatures().tolist() == pytest.approx([0.7] * 6 + [1.0] * 3)
    # batching a batch is the same batch
    again = pack_batch([batch])
    assert torch.equal(again.segment_ids, batch.segment_ids) and torch.equal(
        again.predictor_index, batch.predictor_index
    )


def test_predictor_rule_by_hand_and_as_packed():
    from verl_mem1.training.layout import IGNORE_INDEX, predictor_positions

    seg = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])  # P = 3; segment 1 at 3..4, segment 2 at 5..7
    assert predictor_positions(seg, 3).tolist() == [IGNORE_INDEX] * 3 + [2, 3, 2, 5, 6]
    sample = pack_episode(_record())
    rule = predictor_positions(sample.segment_ids, sample.prompt_len)
    generated = sample.loss_mask.bool()
    assert torch.equal(rule[generated], sample.predictor_index[generated])


def test_renumbering_is_consecutive_and_ordered():
    from verl_mem1.training.layout import renumber_segments

    seg = torch.tensor([0, 0, 2, 2, 5])  # an empty turn left a gap (id 1 unused)
    new, prompt, next_id = renumber_segments(seg, torch.zeros_like(seg), 10)
    assert new.tolist() == [10, 10, 11, 11, 12] and prompt.tolist() == [10] * 5 and next_id == 13


def test_truncation_keeps_prefixes_and_refuses_to_cut_the_prompt():
    from verl_mem1.training.layout import truncate

    sample = pack_episode(_record())
    cut = truncate(sample, sample.prompt_len + 4)
    assert cut.length == sample.prompt_len + 4
    for name in ("input_ids", "position_ids", "segment_ids", "loss_mask", "rollout_logprobs", "predictor_index"):
        assert torch.equal(getattr(cut, name), getattr(sample, name)[: cut.length]), name
    assert truncate(sample, 10**6) is sample
    with pytest.raises(ValueError, match="prompt has 3"):
        truncate(sample, 2)
    with pytest.raises(ValueError, match="single-episode"):
        truncate(pack_batch([sample, sample]), 5)


def test_truncated_sample_scores_exactly_its_prefix(training_model):
    """Cutting the packed row changes no kept token's context: its log-probs are the full row's, cut."""
    from tests.training.records import mem1_record
    from verl_mem1.training.forward import packed_logprobs
    from verl_mem1.training.layout import truncate

    sample = pack_episode(mem1_record(20, 4, 5, 8, seed=3))
    cut = truncate(sample, sample.prompt_len + 30)
    with torch.no_grad():
        full = packed_logprobs(training_model, sample, backend="segmented")
        part = packed_logprobs(training_model, cut, backend="segmented")
    assert part.numel() == cut.num_generated > 0 and (part - full[: part.numel()]).abs().max() < 1e-5


def test_ending_on_a_trained_token_drops_only_the_untrained_tail():
    from verl_mem1.training.layout import end_on_trained_token, truncate

    sample = pack_episode(_record())
    mask = sample.loss_mask.tolist()
    last = max(i for i, m in enumerate(mask) if m) + 1
    assert end_on_trained_token(sample).length == last
    for length in range(sample.prompt_len, sample.length + 1):
        cut = end_on_trained_token(truncate(sample, length))
        kept = mask[:length]
        trained = [i for i, m in enumerate(kept) if m]
        assert cut.length == (trained[-1] + 1 if trained else sample.prompt_len), length
        assert torch.equal(cut.input_ids, sample.input_ids[: cut.length])
