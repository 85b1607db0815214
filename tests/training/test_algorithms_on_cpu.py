"""Advantages and losses through verl's core_algos, checked against hand computations on hand-built episodes."""

from __future__ import annotations

import math

import pytest
import torch

from verl_mem1.records import EpisodeRecord, TurnRecord
from verl_mem1.training import algorithms as algos
from verl_mem1.training.layout import pack_batch, pack_episode


def record(prompt: list[int], turns: list[tuple[list[int], list[int]]]) -> EpisodeRecord:
    """A MEM1 record from (observation ids, generated ids) per turn: context_t = prompt + gen_{t-1} + obs_{t-1}."""
    built, previous = [], []
    for i, (obs, gen) in enumerate(turns):
        built.append(
            TurnRecord(
                index=i,
                context_ids=prompt + previous,
                generated_ids=gen,
                logprobs=[-1.0] * len(gen),
                text="",
                internal_state=None,
                action={"kind": "query", "text": "", "reason": ""},
                observation_ids=obs,
                finish_reason="stop",
                timings={},
            )
        )
        previous = gen + obs
    return EpisodeRecord(
        id="t",
        data_source="test",
        questions=["q"],
        ground_truth=[["a"]],
        context_policy="mem1",
        tag_set="paper",
        sampling={"temperature": 1.0},
        prompt_ids=prompt,
        turns=built,
    )


PROMPT = [11, 12, 13, 14]
# three turns: generated 2, 3 and 2 tokens; observations of 3 and 2 tokens in between
THREE_TURNS = [([31, 32, 33], [101, 102]), ([41, 42], [201, 202, 203]), ([], [301, 302])]


def hand_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    adv, last = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(values) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


def hand_whiten(x: list[float]) -> list[float]:
    mean = sum(x) / len(x)
    var = sum((v - mean) ** 2 for v in x) / (len(x) - 1)  # verl's masked_var is unbiased
    return [(v - mean) / math.sqrt(var + 1e-8) for v in x]


# ------------------------------------------------------------------------------------------------------- GRPO


def test_grpo_matches_verls_formula_and_broadcasts_over_every_turn():
    scores = [1.0, 0.0, 1.0, 0.5, 0.5, 2.0]
    groups = ["a", "a", "a", "b", "b", "c"]
    lengths = [3, 5, 2, 4, 1, 2]
    mask = algos.response_mask(lengths)
    adv, returns = algos.grpo_advantages(algos.outcome_token_rewards(scores, lengths), mask, groups)
    a = torch.tensor([1.0, 0.0, 1.0])
    expected = {0: (1 - a.mean()) / (a.std() + 1e-6), 1: (0 - a.mean()) / (a.std() + 1e-6)}
    expected[2] = expected[0]
    expected[3] = expected[4] = torch.tensor(0.0)  # equal rewards in a group: no signal
    expected[5] = torch.tensor(2.0 / (1.0 + 1e-6))  # a group of one: verl uses mean 0, std 1
    for i, n in enumerate(lengths):
        assert torch.allclose(adv[i, :n], expected[i].expand(n), atol=1e-6), i
        assert torch.all(adv[i, n:] == 0), "padding gets nothing"
    assert torch.equal(adv, returns)
    no_std, _ = algos.grpo_advantages(
        algos.outcome_token_rewards(scores, lengths), mask, groups, norm_adv_by_std_in_grpo=False
    )
    assert torch.allclose(no_std[1, :5], torch.full((5,), -2 / 3), atol=1e-6)  # Dr. GRPO: mean-centred only


def test_grpo_equal_rewards_give_zero_advantage():
    lengths = [4, 2, 3]
    adv, _ = algos.compute_advantages(
        "grpo", algos.outcome_token_rewards([1.0, 1.0, 1.0], lengths), algos.response_mask(lengths), group_ids=[7] * 3
    )
    assert torch.count_nonzero(adv) == 0


def test_grpo_advantage_lands_on_generated_tokens_of_all_segments_only():
    episodes = [record(PROMPT, THREE_TURNS), record(PROMPT, THREE_TURNS[:2])]
    sample = pack_batch(episodes)
    lengths = algos.episode_lengths(sample)
    assert lengths == [7, 5]
    adv, _ = algos.grpo_advantages(
        algos.outcome_token_rewards([1.0, 0.0], lengths), algos.response_mask(lengths), ["g", "g"]
    )
    packed = algos.scatter_to_packed(sample, algos.unpad_episodes(adv, lengths))
    generated = sample.loss_mask.bool()
    assert torch.all(packed[~generated] == 0), "prompt, context copies and observations get no advantage"
    first = sample.episode_index == 0
    assert torch.all(packed[generated & first] > 0) and torch.all(packed[generated & ~first] < 0)
    assert set(sample.segment_ids[generated & first].tolist()) == {1, 2, 3}, "every turn's tokens are credited"


# -------------------------------------------------------------------------------------------------------- GAE


def test_gae_runs_over_generated_tokens_in_trajectory_order():
    sample = pack_episode(record(PROMPT, THREE_TURNS))
    (n,) = algos.episode_lengths(sample)
    # the generated tokens in packed order are the trajectory: turn 1's, then turn 2's, then turn 3's
    assert sample.input_ids[sample.generated_positions].tolist() == [101, 102, 201, 202, 203, 301, 302]
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    rewards = [0.0] * (n - 1) + [1.0]
    gamma, lam = 0.9, 0.8
    adv, returns = algos.compute_advantages(
        "gae",
        algos.outcome_token_rewards([1.0], [n]),
        algos.response_mask([n]),
        values=torch.tensor([values]),
        gamma=gamma,
        lam=lam,
    )
    raw = hand_gae(rewards, values, gamma, lam)
    assert torch.allclose(returns[0], torch.tensor([r + v for r, v in zip(raw, values, strict=True)]), atol=1e-6)
    assert torch.allclose(adv[0], torch.tensor(hand_whiten(raw)), atol=1e-5)
    # the last token of turn 1 bootstraps from the first token of turn 2 (the observation is not a step)
    assert raw[1] == pytest.approx(rewards[1] + gamma * values[2] - values[1] + gamma * lam * raw[2])

    packed = algos.scatter_to_packed(sample, adv[0])
    generated = sample.loss_mask.bool()
    assert torch.all(packed[~generated] == 0), "observation and context tokens get nothing"
    assert torch.allclose(packed[generated], adv[0])


def test_gae_padding_of_a_shorter_episode_changes_nothing():
    lengths = [7, 3]
    values = [torch.linspace(0.1, 0.7, 7), torch.tensor([0.5, -0.2, 0.3])]
    batch_rewards = algos.outcome_token_rewards([1.0, 0.5], lengths)
    _, returns = algos.gae_advantages(
        batch_rewards, algos.pad_episodes(values), algos.response_mask(lengths), gamma=0.95, lam=0.9
    )
    raw = hand_gae([0.0, 0.0, 0.5], values[1].tolist(), 0.95, 0.9)
    assert torch.allclose(returns[1, :3], torch.tensor(raw) + values[1], atol=1e-6)
    assert torch.all(returns[1, 3:] == 0)


# ---------------------------------------------------------------------------------------------------- rewards


def test_outcome_reward_on_last_generated_token_and_kl_in_reward():
    lengths = [3, 1]
    scores = algos.outcome_token_rewards([2.0, -1.0], lengths)
    assert scores.tolist() == [[0.0, 0.0, 2.0], [-1.0, 0.0, 0.0]]
    from verl.trainer.ppo.core_algos import FixedKLController

    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-1.0, 0.0, 0.0]])
    mask = algos.response_mask(lengths)
    rewards, metrics = algos.apply_kl_in_reward(scores, old, ref, mask, FixedKLController(0.1), "kl")
    assert torch.allclose(rewards, scores - 0.1 * (old - ref) * mask)
    assert metrics["actor/reward_kl_penalty_coeff"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="at least one generated token"):
        algos.outcome_token_rewards([1.0], [0])


@pytest.mark.parametrize("estimator", ["rloo", "opo", "reinforce_plus_plus_baseline", "grpo_passk"])
def test_other_verl_outcome_estimators_run_on_episode_rows(estimator):
    lengths = [3, 2, 4, 1]
    adv, _ = algos.compute_advantages(
        estimator,
        algos.outcome_token_rewards([1.0, 0.0, 0.5, 0.5], lengths),
        algos.response_mask(lengths),
        group_ids=["a", "a", "b", "b"],
    )
    assert adv.shape == (4, 4) and torch.isfinite(adv).all()
    assert torch.all(adv * (1 - algos.response_mask(lengths)) == 0)


def test_unknown_estimator_is_named():
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'"):
        algos.compute_advantages("nope", torch.zeros(1, 1), torch.ones(1, 1), group_ids=[0])


# ----------------------------------------------------------------------------------------------------- losses


def hand_ppo(old, new, adv, mask, eps_low, eps_high, c):
    ratio = torch.exp(new - old)
    l1, l2 = -adv * ratio, -adv * ratio.clamp(1 - eps_low, 1 + eps_high)
    clipped = torch.maximum(l1, l2)
    dual = torch.minimum(clipped, -adv * c)
    per_token = torch.where(adv < 0, dual, clipped)
    return per_token, (per_token * mask).sum() / mask.sum()


def test_clipped_policy_loss_matches_hand_computation():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -3.0, 0.0]])
    new = torch.tensor([[-0.5, -2.1, -0.5], [0.5, -3.0, 0.0]])  # ratios e^0.5, e^-0.1, 1 | e^1.5 (> c), 1
    adv = torch.tensor([[1.0, -1.0, 0.5], [-2.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, metrics = algos.policy_loss(old, new, adv, mask, clip_ratio=0.2, clip_ratio_c=3.0)
    per_token, expected = hand_ppo(old, new, adv, mask, 0.2, 0.2, 3.0)
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    assert per_token[1, 0] == pytest.approx(2.0 * 3.0), "dual clip bounds a negative advantage's loss at c·|A|"
    ratio = torch.exp(new - old)
    clipfrac = ((-adv * ratio.clamp(0.8, 1.2) > -adv * ratio).float() * mask).sum() / mask.sum()
    assert metrics["actor/pg_clipfrac"] == pytest.approx(float(clipfrac))
    assert metrics["actor/ppo_kl"] == pytest.approx(float(((old - new) * mask).sum() / mask.sum()), abs=1e-6)

    # asymmetric clipping and episode-weighted aggregation
    loss, _ = algos.policy_loss(
        old,
        new,
        adv,
        mask,
        clip_ratio=0.2,
        clip_ratio_low=0.1,
        clip_ratio_high=0.3,
        loss_agg_mode="seq-mean-token-mean",
    )
    per_token, _ = hand_ppo(old, new, adv, mask, 0.1, 0.3, 3.0)
    per_episode = (per_token * mask).sum(-1) / mask.sum(-1)
    assert float(loss) == pytest.approx(float(per_episode.mean()), abs=1e-6)


def test_micro_batch_losses_sum_to_the_mini_batch_loss():
    torch.manual_seed(0)
    old, new, adv = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    mask = algos.response_mask([5, 3, 4, 2])
    whole, _ = algos.policy_loss(old, new, adv, mask)
    tokens = float(mask.sum())
    parts = [
        algos.policy_loss(old[s], new[s], adv[s], mask[s], batch_num_tokens=tokens, global_batch_size=4)[0]
        for s in (slice(0, 1), slice(1, 4))
    ]
    assert float(sum(parts)) == pytest.approx(float(whole), abs=1e-6)


def test_gradient_raises_logprob_of_positive_advantage_tokens():
    new = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    loss, _ = algos.policy_loss(new.detach().clone(), new, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
    loss.backward()
    assert new.grad[0, 0] < 0 < new.grad[0, 1], "descending the loss raises log π where A > 0 and lowers it where A < 0"


def test_kl_entropy_and_value_losses_match_hand_computation():
    lp = torch.tensor([[-1.0, -2.0, -0.3]])
    ref = torch.tensor([[-1.2, -1.5, -0.3]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    k3 = torch.exp(ref - lp) - (ref - lp) - 1
    assert float(algos.kl_loss(lp, ref, mask)) == pytest.approx(float((k3 * mask).sum() / 2), abs=1e-6)
    ent = torch.tensor([[2.0, 4.0, 100.0]])
    assert float(algos.entropy_loss(ent, mask)) == pytest.approx(3.0)
    vpred, returns, old_v = (
        torch.tensor([[1.0, 0.0, 9.0]]),
        torch.tensor([[0.0, 1.0, 0.0]]),
        torch.tensor([[0.2, 0.0, 0.0]]),
    )
    loss, clipfrac = algos.value_loss(vpred, returns, old_v, mask, cliprange_value=0.5)
    # token 0: unclipped (1-0)^2 = 1, clipped (0.7-0)^2 = 0.49 -> max 1; token 1: both (0-1)^2 = 1
    assert float(loss) == pytest.approx(0.5 * (1.0 + 1.0) / 2)
    assert clipfrac == pytest.approx(0.0)


def test_rows_round_trip():
    flat = torch.arange(7.0)
    parts = algos.split_episodes(flat, [3, 4])
    padded = algos.pad_episodes(parts)
    assert padded.tolist() == [[0, 1, 2, 0], [3, 4, 5, 6]]
    assert torch.equal(torch.cat(algos.unpad_episodes(padded, [3, 4])), flat)
    with pytest.raises(ValueError):
        algos.split_episodes(flat, [3, 3])
