"""Advantages and PPO losses for packed MEM1 episodes, computed by verl's ``core_algos`` (not re-implemented).

verl's estimators and losses work on ``[batch, response_length]`` rows with a response mask. A MEM1 episode is
several turns, each with its own context; what the policy *did* is the sequence of its generated tokens, turn 1's
then turn 2's, ... — which is exactly the order in which a ``PackedSample`` lists its generated tokens (packed
order, see ``layout.py``). So every episode becomes one verl row: its generated tokens in trajectory order,
``response_mask`` 1 over them and 0 only on right padding. Context copies and observations are not actions:
they never appear in a row, so they get no reward, value, advantage or loss. Results are scattered back to packed
positions with :func:`scatter_to_packed` (0 at every non-generated position).

Conventions (the same as verl's for a single-turn response):

- **Outcome reward** sits on the episode's last generated token (the token that ended the episode, usually the
  ``</answer>``); with ``use_kl_in_reward`` every token also gets ``-β·KL(old‖ref)`` (verl's ``apply_kl_penalty``).
- **GRPO** (and the other outcome estimators: RLOO, OPO, REINFORCE++(-baseline), GRPO pass@k): episodes are grouped
  by ``group_ids`` (one id per task, several episodes each); the episode's normalised score is broadcast to all of
  its generated tokens, in every turn. A group whose rewards are all equal gets advantage 0.
- **GAE** (PPO with a critic): run over the episode's generated tokens only, in trajectory order across turns — the
  value of turn 2's first token bootstraps turn 1's last token, the observation in between is not a step.
  Values are the critic's at the generated tokens (``forward.packed_values``: the output at each token's predictor
  position). verl whitens the advantages over the batch; returns are ``advantages_raw + values``.
- **Loss aggregation** is verl's ``agg_loss`` over those rows, so ``token-mean`` weighs every generated token
  equally and the ``seq-mean-*`` modes weigh episodes (not turns) equally.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from verl.trainer.ppo import core_algos
from verl.utils import torch_functional as verl_F

if TYPE_CHECKING:
    from verl_mem1.training.layout import PackedSample

GAE = "gae"
GRPO = "grpo"
_OUTCOME_INPUTS = {"token_level_rewards", "response_mask", "index"}


def _outcome_estimators() -> tuple[str, ...]:
    """verl's registered estimators that need nothing beyond an outcome reward (``token_level_rewards``,
    ``response_mask``, ``index``, and optionally ``config``): read from ``ADV_ESTIMATOR_REGISTRY``, so estimators a
    newer verl (or a plug-in) registers are available without a copied list."""
    import inspect

    names = []
    for name, fn in core_algos.ADV_ESTIMATOR_REGISTRY.items():
        params = inspect.signature(fn).parameters.values()
        required = {p.name for p in params if p.default is inspect.Parameter.empty and p.kind <= p.KEYWORD_ONLY}
        if name != GAE and required <= _OUTCOME_INPUTS:
            names.append(name)
    return tuple(sorted(names))


# verl outcome estimators called with verl's convention (token_level_rewards, response_mask, index, config)
OUTCOME_ESTIMATORS = _outcome_estimators()
ADV_ESTIMATORS = (GAE, *OUTCOME_ESTIMATORS)
# verl's policy losses (``actor.policy_loss.loss_mode``), read from its registry
LOSS_MODES = tuple(sorted(core_algos.POLICY_LOSS_REGISTRY))
KL_ESTIMATORS = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "k1+", "k3+", "low_var_kl+")
LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")

__all__ = [
    "ADV_ESTIMATORS",
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "LOSS_MODES",
    "OUTCOME_ESTIMATORS",
    "apply_kl_in_reward",
    "compute_advantages",
    "entropy_loss",
    "episode_lengths",
    "gae_advantages",
    "grpo_advantages",
    "kl_loss",
    "outcome_token_rewards",
    "pad_episodes",
    "policy_loss",
    "response_mask",
    "scatter_to_packed",
    "split_episodes",
    "unpad_episodes",
    "value_loss",
]


# ------------------------------------------------------------------------------------------- rows and layout


def episode_lengths(sample: PackedSample) -> list[int]:
    """Generated tokens per episode of a (batched) packed sample: the verl row lengths."""
    return sample.generated_per_episode()


def split_episodes(flat: torch.Tensor, lengths: Sequence[int]) -> list[torch.Tensor]:
    """Split a packed-order tensor over generated tokens (``[N]``) into one tensor per episode."""
    if int(flat.shape[0]) != sum(lengths):
        raise ValueError(f"{flat.shape[0]} values for {sum(lengths)} generated tokens")
    return list(torch.split(flat, list(lengths)))


def pad_episodes(values: Sequence[torch.Tensor], *, pad: float = 0.0, width: int | None = None) -> torch.Tensor:
    """Stack per-episode 1-D tensors into verl's ``[B, T]`` rows, right-padded with ``pad``."""
    if not values:
        raise ValueError("no episodes")
    width = max(int(v.shape[0]) for v in values) if width is None else width
    out = torch.full((len(values), width), pad, dtype=values[0].dtype, device=values[0].device)
    for i, v in enumerate(values):
        out[i, : v.shape[0]] = v
    return out


def response_mask(lengths: Sequence[int], *, width: int | None = None, device=None) -> torch.Tensor:
    """verl's response mask for rows of ``lengths`` generated tokens: 1 on them, 0 on the right padding."""
    width = max(lengths, default=0) if width is None else width
    return (torch.arange(width, device=device)[None, :] < torch.tensor(list(lengths), device=device)[:, None]).float()


def unpad_episodes(padded: torch.Tensor, lengths: Sequence[int]) -> list[torch.Tensor]:
    """Inverse of :func:`pad_episodes`."""
    return [padded[i, :n] for i, n in enumerate(lengths)]


def scatter_to_packed(sample: PackedSample, generated: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Place per-generated-token values (packed order, flat or per episode) at their packed positions; 0 elsewhere."""
    flat = torch.cat(list(generated)) if not isinstance(generated, torch.Tensor) else generated
    out = torch.zeros(sample.length, dtype=flat.dtype, device=flat.device)
    out[sample.generated_positions.to(flat.device)] = flat
    return out


# ------------------------------------------------------------------------------------------------- rewards


def outcome_token_rewards(scores: Sequence[float], lengths: Sequence[int], *, width: int | None = None) -> torch.Tensor:
    """verl's ``token_level_scores`` for outcome rewards: each episode's score on its last generated token."""
    if len(scores) != len(lengths):
        raise ValueError(f"{len(scores)} scores for {len(lengths)} episodes")
    if any(n < 1 for n in lengths):
        raise ValueError("every episode needs at least one generated token to carry its reward")
    width = max(lengths) if width is None else width
    out = torch.zeros(len(lengths), width, dtype=torch.float32)
    for i, (score, n) in enumerate(zip(scores, lengths, strict=True)):
        out[i, n - 1] = float(score)
    return out


def apply_kl_in_reward(
    token_scores: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_ctrl: Any,
    kl_penalty: str = "kl",
) -> tuple[torch.Tensor, dict[str, float]]:
    """``rewards = scores − β·KL(old‖ref)`` per generated token and the controller update, as verl's
    ``ray_trainer.apply_kl_penalty`` (``kl_ctrl``: ``core_algos.get_kl_controller(algorithm.kl_ctrl)``)."""
    kld = core_algos.kl_penalty(old_logprobs, ref_logprobs, kl_penalty=kl_penalty) * mask
    beta = float(kl_ctrl.value)
    rewards = token_scores - beta * kld
    current_kl = float(verl_F.masked_mean(kld, mask=mask, axis=-1).mean())
    kl_ctrl.update(current_kl=current_kl, n_steps=int(token_scores.shape[0]))
    return rewards, {"actor/reward_kl_penalty": current_kl, "actor/reward_kl_penalty_coeff": beta}


# ---------------------------------------------------------------------------------------------- advantages


def _index(group_ids: Sequence[Any]) -> np.ndarray:
    index = np.empty(len(group_ids), dtype=object)
    index[:] = [str(g) for g in group_ids]
    return index


def grpo_advantages(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: Sequence[Any],
    *,
    norm_adv_by_std_in_grpo: bool = True,
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's ``compute_grpo_outcome_advantage``: ``(R − mean_group) / (std_group + ε)`` on every generated token."""
    return core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=token_rewards,
        response_mask=mask,
        index=_index(group_ids),
        epsilon=epsilon,
        norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
    )


def gae_advantages(
    token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, lam: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's ``compute_gae_advantage_return`` over generated tokens in trajectory order (whitened advantages,
    returns = raw advantages + values). Right padding carries nothing back: its mask is 0."""
    return core_algos.compute_gae_advantage_return(
        token_level_rewards=token_rewards, values=values, response_mask=mask, gamma=gamma, lam=lam
    )


def compute_advantages(
    estimator: str,
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    group_ids: Sequence[Any] | None = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    norm_adv_by_std_in_grpo: bool = True,
    algo_config: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch as verl's ``ray_trainer.compute_advantage`` does: GAE needs ``values``, the outcome estimators
    need ``group_ids``. Returns ``(advantages, returns)``, both ``[B, T]`` and 0 on padding."""
    if estimator == GAE:
        if values is None:
            raise ValueError("the gae estimator needs critic values")
        return gae_advantages(token_rewards, values, mask, gamma=gamma, lam=lam)
    if estimator not in OUTCOME_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose from {', '.join(ADV_ESTIMATORS)}")
    if group_ids is None:
        raise ValueError(f"the {estimator} estimator needs group_ids (one per episode: the task it played)")
    if estimator == GRPO:
        return grpo_advantages(token_rewards, mask, group_ids, norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo)
    if algo_config is None:
        algo_config = {"gamma": gamma, "lam": lam, "norm_adv_by_std_in_grpo": norm_adv_by_std_in_grpo}
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(algo_config, DictConfig) and isinstance(algo_config, Mapping):
        algo_config = OmegaConf.create(dict(algo_config))  # verl's estimators read fields as attributes
    fn = core_algos.get_adv_estimator_fn(estimator)
    return fn(token_level_rewards=token_rewards, response_mask=mask, index=_index(group_ids), config=algo_config)


# -------------------------------------------------------------------------------------------------- losses


def _batch_info(batch_num_tokens: float | None, global_batch_size: float | None, loss_scale_factor: int | None):
    info: dict[str, Any] = {"dp_size": 1}
    if batch_num_tokens is not None:
        info["batch_num_tokens"] = batch_num_tokens
    if global_batch_size is not None:
        info["global_batch_size"] = global_batch_size
    if loss_scale_factor is not None:
        info["loss_scale_factor"] = loss_scale_factor
    return info


def policy_loss(
    old_logprobs: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_ratio: float = 0.2,
    clip_ratio_low: float | None = None,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    loss_mode: str = "vanilla",
    batch_num_tokens: float | None = None,
    global_batch_size: float | None = None,
    loss_scale_factor: int | None = None,
    actor_config: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The PPO policy loss from verl's registry (``vanilla`` = dual-clip PPO), on ``[B, T]`` rows.

    ``batch_num_tokens`` / ``global_batch_size`` are the *mini-batch's* generated tokens / episodes, so that the
    losses of its micro-batches sum to the mini-batch loss (verl's ``global_batch_info``). ``actor_config`` (the
    ``actor_rollout_ref.actor`` section) supplies the fields other loss modes read; explicit arguments win.
    """
    from omegaconf import DictConfig, OmegaConf

    if actor_config is None:
        base: dict[str, Any] = {}
    elif isinstance(actor_config, DictConfig):
        base = OmegaConf.to_container(actor_config, resolve=True)
    else:
        base = dict(actor_config)
    base.update(
        clip_ratio=clip_ratio,
        clip_ratio_low=clip_ratio if clip_ratio_low is None else clip_ratio_low,
        clip_ratio_high=clip_ratio if clip_ratio_high is None else clip_ratio_high,
        clip_ratio_c=clip_ratio_c,
        loss_agg_mode=loss_agg_mode,
        global_batch_info=_batch_info(batch_num_tokens, global_batch_size, loss_scale_factor),
    )
    config = OmegaConf.create(base)
    fn = core_algos.get_policy_loss_fn(loss_mode)
    loss, metrics = fn(
        old_log_prob=old_logprobs,
        log_prob=logprobs,
        advantages=advantages,
        response_mask=mask,
        loss_agg_mode=loss_agg_mode,
        config=config,
    )
    return loss, {k: float(v) for k, v in metrics.items()}


def entropy_loss(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_agg_mode: str = "token-mean",
    batch_num_tokens: float | None = None,
    global_batch_size: float | None = None,
    loss_scale_factor: int | None = None,
) -> torch.Tensor:
    """Mean entropy of the generated tokens, aggregated like the policy loss (subtract ``coeff ×`` it)."""
    info = _batch_info(batch_num_tokens, global_batch_size, loss_scale_factor)
    return core_algos.agg_loss(loss_mat=entropy, loss_mask=mask, loss_agg_mode=loss_agg_mode, **info)


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_type: str = "low_var_kl",
    loss_agg_mode: str = "token-mean",
    batch_num_tokens: float | None = None,
    global_batch_size: float | None = None,
    loss_scale_factor: int | None = None,
) -> torch.Tensor:
    """verl's actor KL loss: ``agg_loss(kl_penalty(logprob, ref_logprob, kl_type))`` (add ``kl_loss_coef ×`` it)."""
    kld = core_algos.kl_penalty(logprob=logprobs, ref_logprob=ref_logprobs, kl_penalty=kl_type)
    info = _batch_info(batch_num_tokens, global_batch_size, loss_scale_factor)
    return core_algos.agg_loss(loss_mat=kld, loss_mask=mask, loss_agg_mode=loss_agg_mode, **info)


def value_loss(
    vpreds: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange_value: float = 0.5,
    loss_agg_mode: str = "token-mean",
    batch_num_tokens: float | None = None,
    global_batch_size: float | None = None,
    loss_scale_factor: int | None = None,
) -> tuple[torch.Tensor, float]:
    """verl's clipped value loss ``0.5·max((V−R)², (clip(V)−R)²)`` and its clip fraction."""
    loss, clipfrac = core_algos.compute_value_loss(
        vpreds=vpreds,
        returns=returns,
        values=old_values,
        response_mask=mask,
        cliprange_value=cliprange_value,
        loss_agg_mode=loss_agg_mode,
        batch_num_tokens=batch_num_tokens,
        global_batch_size=global_batch_size,
        loss_scale_factor=loss_scale_factor,
    )
    return loss, float(clipfrac)
