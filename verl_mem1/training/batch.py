"""One step's episodes as a training batch: packed samples, the rollout's log-probs as the old log-probs, and
advantages from verl's estimators (``algorithms.py``), all per episode over its generated tokens (trajectory order).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from verl_mem1.training import algorithms as algos
from verl_mem1.training.layout import PackedSample, pack_episode

if TYPE_CHECKING:
    from verl_mem1.records import EpisodeRecord

logger = logging.getLogger(__name__)


@dataclass
class EpisodeBatch:
    """The episodes of one step, packed, with per-episode tensors over their generated tokens (trajectory order).

    ``old_logprobs`` are the rollout's recorded log-probs; ``advantages``/``returns``/``values``/``ref_logprobs``
    are filled by the step (each a list with one 1-D tensor per episode).
    """

    records: list[EpisodeRecord]
    samples: list[PackedSample]
    scores: list[float]
    group_ids: list[str]
    old_logprobs: list[torch.Tensor]
    advantages: list[torch.Tensor] | None = None
    returns: list[torch.Tensor] | None = None
    values: list[torch.Tensor] | None = None
    ref_logprobs: list[torch.Tensor] | None = None

    @property
    def lengths(self) -> list[int]:
        return [s.num_generated for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)


def env_error_count(records: Sequence[EpisodeRecord], max_rate: float) -> int:
    """Episodes the environment failed (``env_error``: still failing after the client's retries); raises when more
    than ``max_rate`` of them did (``mem1.max_env_error_rate``): a step of such episodes would train on noise."""
    failed = [r for r in records if r.termination == "env_error"]
    if records and len(failed) / len(records) > max_rate:
        raise RuntimeError(
            f"{len(failed)} of {len(records)} episodes lost their environment (more than mem1.max_env_error_rate="
            f"{max_rate}); first error: {failed[0].error}"
        )
    return len(failed)


def build_batch(records: Sequence[EpisodeRecord], scores: Sequence[float], group_ids: Sequence[str]) -> EpisodeBatch:
    """Pack episodes. Left out: episodes that generated nothing (nothing to train on) and episodes the environment
    failed (their reward says nothing about the policy); a GRPO group then compares the episodes it has left."""
    keep = [i for i, r in enumerate(records) if any(t.generated_ids for t in r.turns) and r.termination != "env_error"]
    if len(keep) < len(records):
        logger.warning("%d episode(s) generated no tokens or lost their environment: left out of the update",
                       len(records) - len(keep))  # fmt: skip
    if not keep:
        raise RuntimeError("no episode generated any token with a working environment; nothing to train on")
    samples = [pack_episode(records[i]) for i in keep]
    return EpisodeBatch(
        records=[records[i] for i in keep],
        samples=samples,
        scores=[float(scores[i]) for i in keep],
        group_ids=[str(group_ids[i]) for i in keep],
        old_logprobs=[s.rollout_logprobs[s.loss_mask.bool()].clone() for s in samples],
    )


def compute_batch_advantages(
    batch: EpisodeBatch,
    estimator: str,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
    norm_adv_by_std_in_grpo: bool = True,
    algo_config: Any = None,
    kl_ctrl: Any = None,
    kl_penalty: str = "kl",
) -> dict[str, float]:
    """Fill ``batch.advantages``/``returns`` with verl's estimator (``kl_ctrl``: KL-in-reward against
    ``batch.ref_logprobs``). Returns reward/advantage metrics."""
    lengths = batch.lengths
    mask = algos.response_mask(lengths)
    token_rewards = algos.outcome_token_rewards(batch.scores, lengths)
    metrics: dict[str, float] = {}
    if kl_ctrl is not None:
        if batch.ref_logprobs is None:
            raise ValueError("KL in the reward needs the reference model's log-probs")
        old = algos.pad_episodes([x.float().cpu() for x in batch.old_logprobs])
        ref = algos.pad_episodes([x.float().cpu() for x in batch.ref_logprobs])
        token_rewards, kl_metrics = algos.apply_kl_in_reward(token_rewards, old, ref, mask, kl_ctrl, kl_penalty)
        metrics.update(kl_metrics)
    values = None
    if estimator == algos.GAE:
        if batch.values is None:
            raise ValueError("the gae estimator needs critic values (batch.values)")
        values = algos.pad_episodes([v.float().cpu() for v in batch.values])
    advantages, returns = algos.compute_advantages(
        estimator,
        token_rewards,
        mask,
        group_ids=batch.group_ids,
        values=values,
        gamma=gamma,
        lam=lam,
        norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
        algo_config=algo_config,
    )
    batch.advantages = algos.unpad_episodes(advantages, lengths)
    batch.returns = algos.unpad_episodes(returns, lengths)
    valid = mask.bool()
    metrics["critic/advantages/mean"] = float(advantages[valid].mean())
    metrics["critic/advantages/max"] = float(advantages[valid].max())
    metrics["critic/advantages/min"] = float(advantages[valid].min())
    metrics["critic/rewards/mean"] = float(token_rewards.sum(-1).mean())
    if values is not None:
        metrics["critic/values/mean"] = float(values[valid].mean())
        metrics["critic/returns/mean"] = float(returns[valid].mean())
    return metrics
