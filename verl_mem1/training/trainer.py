"""The single-machine MEM1 trainer (the embedded default: CPU, or one GPU), driven by a verl ``ppo_trainer`` config.

One step:

1. take ``data.train_batch_size`` tasks and play ``actor_rollout_ref.rollout.n`` episodes of each with the MEM1
   episode loop, the policy itself generating (``HFLocalBackend`` on the same weights, eval mode, no grad);
2. pack every episode (``packing.pack_episode``); the old log-probs *are* the rollout's recorded log-probs — the
   packed forward reproduces them exactly, which the update checks on every token it scores before its first
   optimizer step (metric ``actor/rollout_logprob_diff``; above ``mem1.logprob_tolerance`` the run stops);
3. rewards (EM or F1 of the final answer), optional reference-model KL (in the reward or as a loss), critic values
   when the estimator is GAE, advantages with verl's ``core_algos`` (see ``algorithms.py`` for the conventions);
4. ``ppo_epochs`` × mini-batches (``ppo_mini_batch_size`` tasks × n episodes) of the clipped PPO update with AdamW
   and gradient clipping, micro-batches packed into one row each (``pack_batch``); then the critic's update;
5. metrics to verl's ``Tracking`` (console by default), a checkpoint every ``trainer.save_freq`` steps.

Checkpoints follow verl's naming: ``{trainer.default_local_dir}/global_step_N/`` holding ``actor/`` (a
``from_pretrained`` directory: model and tokenizer, so ``mem1 eval --model .../actor`` works), ``critic/`` when
there is one, ``trainer_state.pt`` (optimizers, LR schedulers, KL controller, data position, RNG states) and
``config.yaml``; ``latest_checkpointed_iteration.txt`` names the last one, and ``trainer.resume_mode=auto`` picks
it up. Environment servers are imported lazily, only to start the bundled retriever for ``mem1.retriever_url=auto``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from verl_mem1.training import algorithms as algos
from verl_mem1.training.forward import (
    PLAIN_HEAD_MODEL_TYPES,
    _plain_head,
    packed_logprobs,
    packed_logprobs_and_entropy,
    packed_values,
)
from verl_mem1.training.packing import PackedSample, pack_batch, pack_episode, packed_token_count, per_turn_token_count
from verl_mem1.training.streaming import critic_parts, streamed_logprobs_and_entropy, streamed_values

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from verl_mem1.rollout.episode import EpisodeRecord
    from verl_mem1.rollout.tasks import Task

logger = logging.getLogger(__name__)

TRACKER_FILE = "latest_checkpointed_iteration.txt"  # verl's checkpoint tracker
STEP_DIR = "global_step_{}"
ATTENTION_BACKENDS = ("flex", "dense", "segmented", "flash")
RESUME_MODES = ("auto", "disable", "resume_path")
LOSS_MODES = ("vanilla", "gspo", "gpg", "clip_cov", "kl_cov", "geo_mean", "dppo_tv", "dppo_kl", "cispo", "sapo")
# Loss modes whose loss is a weighted sum of per-token terms, so segment groups can back-propagate it in parts.
GROUPABLE_LOSS_MODES = ("vanilla", "gpg", "cispo")


# The ``mem1:`` keys the trainer reads and their values when a recipe leaves them out. Names shared with the verl
# plug-in's section (``verl_plugin/config.py``) mean the same thing there.
MEM1_DEFAULTS: dict[str, Any] = {
    "context": "mem1",  # mem1 | full | window:K
    "tags": None,  # paper | search_r1; None: the tasks' extra_info.tags, else paper
    "max_turns": None,  # None: 6, or 20 for 8+ objectives
    "max_new_tokens": None,  # per turn; None: actor_rollout_ref.rollout.response_length
    "max_observation_tokens": None,
    "max_context_tokens": None,
    "on_invalid": "continue",
    "require_state": False,
    "env": "retrieval",  # retrieval: QA over retrieval_url | webshop: shopping on webshop_url
    "retriever_url": "auto",  # auto: serve the bundled HotpotQA BM25 index on loopback for the run
    "webshop_url": "auto",  # auto: serve the bundled 100-product WebShop on loopback for the run
    "train_goals": "50:",  # WebShop goals played in training / validation (data.*_files null), START:STOP
    "val_goals": "0:50",
    "invalid_action_penalty": 0.0,  # subtracted from an episode's reward per invalid turn
    "topk": 3,
    "retriever_timeout_s": 30.0,
    "objectives": 1,  # questions per composed task (data.train_files null)
    "train_source": "hotpotqa-train",
    "val_source": "hotpotqa-dev",
    "reward_metric": "em",  # em | f1 of the final answer
    "reward_reduce": "sum",  # over objectives: sum (as the paper reports) | mean
    "attention": "flex",  # flex | dense | segmented | flash
    "compile_flex": False,
    "dtype": "float32",
    "logprob_tolerance": 1e-4,  # None: only log actor/rollout_logprob_diff
    "segment_group_tokens": None,  # None: one packed row per micro-batch; N: segment groups of <= N tokens
    "concurrency": 64,
    "generate_batch_size": 16,
    "seed": 0,
}
_UNSET = object()


class ConfigError(ValueError):
    """A bad training config value; the message names the key."""


# ---------------------------------------------------------------------------------------------- validation


def cfg_get(cfg: Any, key: str, default: Any = _UNSET) -> Any:
    """``OmegaConf.select`` that treats ``???`` as missing; ``mem1.*`` keys fall back to ``MEM1_DEFAULTS``."""
    from omegaconf import OmegaConf

    if default is _UNSET:
        default = MEM1_DEFAULTS.get(key[5:]) if key.startswith("mem1.") else None
    value = OmegaConf.select(cfg, key, default=default, throw_on_missing=False)
    return default if value == "???" else value


def _get(cfg: Any, key: str, default: Any = _UNSET) -> Any:
    return cfg_get(cfg, key, default)


def _fail(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{key}={value!r}: {why}")


def validate_config(cfg: DictConfig) -> None:
    """Check every value the trainer reads; raise ``ConfigError`` naming the key before anything is loaded."""
    from verl_mem1.protocol import get_tag_set, parse_context_policy

    def integer(key: str, minimum: int | None = None, allow_none: bool = False) -> int | None:
        value = _get(cfg, key)
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, value, "expected an integer")
        if minimum is not None and value < minimum:
            raise _fail(key, value, f"must be >= {minimum}")
        return value

    def number(key: str, low: float | None = None, high: float | None = None, allow_none: bool = False):
        value = _get(cfg, key)
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(key, value, "expected a number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise _fail(key, value, f"must be in [{low}, {high}]")
        return float(value)

    def choice(key: str, options: Sequence[str]) -> str:
        value = _get(cfg, key)
        if value not in options:
            raise _fail(key, value, f"choose one of {', '.join(map(str, options))}")
        return value

    batch = integer("data.train_batch_size", 1)
    n = integer("actor_rollout_ref.rollout.n", 1)
    integer("actor_rollout_ref.rollout.response_length", 1)
    number("actor_rollout_ref.rollout.temperature", 0.0)
    number("actor_rollout_ref.rollout.top_p", 0.0, 1.0)
    top_k = integer("actor_rollout_ref.rollout.top_k")
    if top_k == 0 or top_k < -1:
        raise _fail("actor_rollout_ref.rollout.top_k", top_k, "must be -1 (off) or >= 1")
    if not _get(cfg, "actor_rollout_ref.model.path"):
        raise _fail("actor_rollout_ref.model.path", _get(cfg, "actor_rollout_ref.model.path"), "give a model")
    number("actor_rollout_ref.actor.optim.lr", 0.0)
    number("actor_rollout_ref.actor.optim.weight_decay", 0.0)
    number("actor_rollout_ref.actor.optim.clip_grad", 0.0, allow_none=True)
    choice("actor_rollout_ref.actor.optim.lr_scheduler_type", ("constant", "cosine"))
    integer("actor_rollout_ref.actor.ppo_epochs", 1)
    mini = integer("actor_rollout_ref.actor.ppo_mini_batch_size", 1)
    if mini > batch:
        raise _fail("actor_rollout_ref.actor.ppo_mini_batch_size", mini, f"must be <= data.train_batch_size ({batch})")
    integer("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", 1, allow_none=True)
    integer("actor_rollout_ref.actor.ppo_max_token_len_per_gpu", 1)
    number("actor_rollout_ref.actor.clip_ratio", 0.0)
    number("actor_rollout_ref.actor.clip_ratio_low", 0.0, allow_none=True)
    number("actor_rollout_ref.actor.clip_ratio_high", 0.0, allow_none=True)
    number("actor_rollout_ref.actor.clip_ratio_c", 1.0 + 1e-9)
    choice("actor_rollout_ref.actor.loss_agg_mode", algos.LOSS_AGG_MODES)
    choice("actor_rollout_ref.actor.policy_loss.loss_mode", LOSS_MODES)
    number("actor_rollout_ref.actor.entropy_coeff")
    number("actor_rollout_ref.actor.kl_loss_coef", 0.0)
    choice("actor_rollout_ref.actor.kl_loss_type", algos.KL_ESTIMATORS)
    estimator = choice("algorithm.adv_estimator", algos.ADV_ESTIMATORS)
    number("algorithm.gamma", 0.0, 1.0)
    number("algorithm.lam", 0.0, 1.0)
    choice("algorithm.kl_penalty", algos.KL_ESTIMATORS)
    choice("algorithm.kl_ctrl.type", ("fixed", "adaptive"))
    number("algorithm.kl_ctrl.kl_coef", 0.0)
    if estimator == algos.GAE:
        number("critic.optim.lr", 0.0)
        number("critic.cliprange_value", 0.0)
        integer("critic.ppo_epochs", 1)
        if not _get(cfg, "critic.model.path"):
            raise _fail("critic.model.path", _get(cfg, "critic.model.path"), "the gae estimator needs a critic")
    elif n < 2:
        logger.warning(
            "%s with actor_rollout_ref.rollout.n=1 has no group baseline: advantages are raw rewards", estimator
        )
    steps = integer("trainer.total_training_steps", 1, allow_none=True)
    if steps is None:
        integer("trainer.total_epochs", 1)
    integer("trainer.save_freq")
    integer("trainer.test_freq")
    integer("trainer.critic_warmup", 0)
    integer("trainer.max_actor_ckpt_to_keep", 1, allow_none=True)
    if not _get(cfg, "trainer.default_local_dir"):
        raise _fail("trainer.default_local_dir", _get(cfg, "trainer.default_local_dir"), "give a checkpoint directory")
    resume = choice("trainer.resume_mode", RESUME_MODES)
    if resume == "resume_path" and not _get(cfg, "trainer.resume_from_path"):
        raise _fail("trainer.resume_from_path", None, "trainer.resume_mode=resume_path needs a checkpoint path")
    loggers = _get(cfg, "trainer.logger")
    loggers = [loggers] if isinstance(loggers, str) else list(loggers or [])
    from verl.utils.tracking import Tracking

    for name in loggers:
        if name not in Tracking.supported_backend:
            raise _fail("trainer.logger", name, f"unknown logger; choose from {', '.join(Tracking.supported_backend)}")
    device = choice("trainer.device", ("cpu", "cuda", "auto"))
    if device == "cuda" and not torch.cuda.is_available():
        raise _fail("trainer.device", device, "CUDA is not available on this machine; use cpu")

    try:
        parse_context_policy(str(_get(cfg, "mem1.context")))
    except ValueError as exc:
        raise _fail("mem1.context", _get(cfg, "mem1.context"), str(exc)) from None
    if _get(cfg, "mem1.tags") is not None:
        try:
            get_tag_set(str(_get(cfg, "mem1.tags")))
        except (ValueError, KeyError) as exc:
            raise _fail("mem1.tags", _get(cfg, "mem1.tags"), str(exc)) from None
    integer("mem1.max_turns", 1, allow_none=True)
    integer("mem1.max_new_tokens", 1, allow_none=True)
    integer("mem1.objectives", 1)
    integer("mem1.topk", 1)
    number("mem1.retriever_timeout_s", 0.001)
    integer("mem1.concurrency", 1)
    integer("mem1.generate_batch_size", 1)
    integer("mem1.seed")
    integer("mem1.max_observation_tokens", 1, allow_none=True)
    integer("mem1.max_context_tokens", 2, allow_none=True)
    choice("mem1.on_invalid", ("continue", "end"))
    env = choice("mem1.env", ("retrieval", "webshop"))
    for key in ("mem1.retriever_url", "mem1.webshop_url"):
        url = _get(cfg, key)
        if not isinstance(url, str) or not (url == "auto" or url.startswith(("http://", "https://"))):
            raise _fail(key, url, "expected 'auto' or an http(s):// URL of a server")
    tags = _get(cfg, "mem1.tags")
    if tags is not None and get_tag_set(str(tags)).answers == (env == "webshop"):
        fit = "webshop (or null)" if env == "webshop" else "paper or search_r1"
        raise _fail("mem1.tags", tags, f"does not fit mem1.env={env}: use {fit}")
    number("mem1.invalid_action_penalty", 0.0)
    choice("mem1.attention", ATTENTION_BACKENDS)
    choice("mem1.dtype", ("float32", "bfloat16", "float16"))
    choice("mem1.reward_metric", ("em", "f1"))
    choice("mem1.reward_reduce", ("sum", "mean"))
    number("mem1.logprob_tolerance", 0.0, allow_none=True)
    if integer("mem1.segment_group_tokens", 1, allow_none=True) is not None:
        mode = _get(cfg, "actor_rollout_ref.actor.policy_loss.loss_mode", "vanilla")
        if mode not in GROUPABLE_LOSS_MODES:
            raise _fail(
                "mem1.segment_group_tokens",
                _get(cfg, "mem1.segment_group_tokens"),
                f"segment groups need a per-token loss ({', '.join(GROUPABLE_LOSS_MODES)}); loss_mode {mode!r} "
                "couples tokens: set mem1.segment_group_tokens=null",
            )
    if _get(cfg, "data.train_files") is None and not _get(cfg, "mem1.train_source"):
        raise _fail("mem1.train_source", None, "give data.train_files or a question source to compose tasks from")
    for key in ("data.train_files", "data.val_files"):
        for path in _as_list(_get(cfg, key)):
            if not Path(str(path)).expanduser().is_file():
                raise _fail(key, str(path), "file not found")


def _present(metrics: dict[str, float | None]) -> dict[str, float]:
    """Metrics that apply to this run (EM/F1 for QA, success rate for WebShop)."""
    return {k: float(v) for k, v in metrics.items() if v is not None}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


# ----------------------------------------------------------------------------------------------- the batch


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


def build_batch(records: Sequence[EpisodeRecord], scores: Sequence[float], group_ids: Sequence[str]) -> EpisodeBatch:
    """Pack episodes; episodes that generated nothing (nothing to train on) are left out."""
    keep = [i for i, r in enumerate(records) if any(t.generated_ids for t in r.turns)]
    if len(keep) < len(records):
        logger.warning("%d episode(s) generated no tokens and are left out of the update", len(records) - len(keep))
    if not keep:
        raise RuntimeError("no episode generated any token; nothing to train on")
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


# ------------------------------------------------------------------------------------------------- updates


@dataclass
class PPOSettings:
    """What the policy and critic updates read, in verl's terms (``actor_rollout_ref.actor`` / ``critic``)."""

    ppo_epochs: int = 1
    mini_batch_episodes: int = 0  # 0: the whole batch in one mini-batch
    micro_batch_episodes: int | None = None  # None: the whole mini-batch in one packed row
    max_token_len: int | None = None  # use_dynamic_bsz: micro-batches of at most this many packed tokens
    shuffle: bool = False
    seed: int = 42
    clip_ratio: float = 0.2
    clip_ratio_low: float | None = None
    clip_ratio_high: float | None = None
    clip_ratio_c: float = 3.0
    loss_agg_mode: str = "token-mean"
    loss_mode: str = "vanilla"
    loss_scale_factor: int | None = None
    entropy_coeff: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_type: str = "low_var_kl"
    clip_grad: float | None = 1.0
    backend: str = "flex"
    compile_flex: bool = False
    logprob_tolerance: float | None = 1e-4
    segment_group_tokens: int | None = None
    critic_ppo_epochs: int = 1
    cliprange_value: float = 0.5
    critic_clip_grad: float | None = 1.0
    actor_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> PPOSettings:
        from omegaconf import OmegaConf

        actor = cfg.actor_rollout_ref.actor
        n = int(cfg.actor_rollout_ref.rollout.n)
        micro = _get(cfg, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu")
        dynamic = bool(_get(cfg, "actor_rollout_ref.actor.use_dynamic_bsz", False))
        return cls(
            ppo_epochs=int(actor.ppo_epochs),
            mini_batch_episodes=int(actor.ppo_mini_batch_size) * n,
            micro_batch_episodes=None if micro is None else int(micro),
            max_token_len=int(actor.ppo_max_token_len_per_gpu) if dynamic else None,
            shuffle=bool(actor.shuffle),
            seed=int(_get(cfg, "actor_rollout_ref.actor.data_loader_seed", 42)),
            clip_ratio=float(actor.clip_ratio),
            clip_ratio_low=_get(cfg, "actor_rollout_ref.actor.clip_ratio_low"),
            clip_ratio_high=_get(cfg, "actor_rollout_ref.actor.clip_ratio_high"),
            clip_ratio_c=float(actor.clip_ratio_c),
            loss_agg_mode=str(actor.loss_agg_mode),
            loss_mode=str(_get(cfg, "actor_rollout_ref.actor.policy_loss.loss_mode", "vanilla")),
            loss_scale_factor=_get(cfg, "actor_rollout_ref.actor.loss_scale_factor"),
            entropy_coeff=float(actor.entropy_coeff),
            use_kl_loss=bool(actor.use_kl_loss),
            kl_loss_coef=float(actor.kl_loss_coef),
            kl_loss_type=str(actor.kl_loss_type),
            clip_grad=_get(cfg, "actor_rollout_ref.actor.optim.clip_grad"),
            backend=str(_get(cfg, "mem1.attention")),
            compile_flex=bool(_get(cfg, "mem1.compile_flex")),
            logprob_tolerance=_get(cfg, "mem1.logprob_tolerance"),
            segment_group_tokens=_get(cfg, "mem1.segment_group_tokens"),
            critic_ppo_epochs=int(_get(cfg, "critic.ppo_epochs", 1) or 1),
            cliprange_value=float(_get(cfg, "critic.cliprange_value", 0.5)),
            critic_clip_grad=_get(cfg, "critic.optim.clip_grad", 1.0),
            actor_config=OmegaConf.to_container(actor, resolve=True),
        )


def no_grad_backend(backend: str, device: torch.device) -> str:
    """The backend for gradient-free forwards: on CPU ``flex`` runs as ``segmented`` (same rule, exact; torch's eager
    CPU flex materialises every score and compiling it costs more than a short run saves)."""
    return "segmented" if backend == "flex" and device.type == "cpu" else backend


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def micro_batches(
    indices: Sequence[int], samples: Sequence[PackedSample], size: int | None, max_tokens: int | None
) -> list[list[int]]:
    """Split a mini-batch into micro-batches: fixed ``size`` episodes, or greedy by packed length (``max_tokens``)."""
    indices = list(indices)
    if max_tokens is not None:
        out: list[list[int]] = []
        current: list[int] = []
        used = 0
        for i in indices:
            length = samples[i].length
            if current and used + length > max_tokens:
                out.append(current)
                current, used = [], 0
            current.append(i)
            used += length
        return out + ([current] if current else [])
    size = size or len(indices)
    return [indices[k : k + size] for k in range(0, len(indices), size)]


def _rows(values: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    return algos.pad_episodes([v.to(device=device, dtype=torch.float32) for v in values])


@torch.no_grad()
def batch_logprobs(
    model: torch.nn.Module, samples: Sequence[PackedSample], settings: PPOSettings
) -> list[torch.Tensor]:
    """Per-episode log-probs of the generated tokens under ``model`` (no grad), micro-batched like the update."""
    backend = no_grad_backend(settings.backend, _device(model))
    out: list[torch.Tensor] = []
    for micro in micro_batches(range(len(samples)), samples, settings.micro_batch_episodes, settings.max_token_len):
        packed = pack_batch([samples[i] for i in micro])
        lp = packed_logprobs(model, packed, backend=backend, compile_flex=settings.compile_flex)
        out.extend(x.float().cpu() for x in algos.split_episodes(lp, [samples[i].num_generated for i in micro]))
    return out


@torch.no_grad()
def batch_values(critic: torch.nn.Module, samples: Sequence[PackedSample], settings: PPOSettings) -> list[torch.Tensor]:
    """Per-episode critic values at the generated tokens (no grad)."""
    backend = no_grad_backend(settings.backend, _device(critic))
    out: list[torch.Tensor] = []
    for micro in micro_batches(range(len(samples)), samples, settings.micro_batch_episodes, settings.max_token_len):
        packed = pack_batch([samples[i] for i in micro])
        values = packed_values(critic, packed, backend, compile_flex=settings.compile_flex)
        out.extend(x.float().cpu() for x in algos.split_episodes(values, [samples[i].num_generated for i in micro]))
    return out


class _Mean:
    """Token-weighted running means of metrics over micro-batches."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict[str, float], weight: float) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * weight
            self.weights[k] = self.weights.get(k, 0.0) + weight

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.weights[k] for k in self.sums if self.weights[k] > 0}


def _minibatches(n: int, size: int, shuffle: bool, generator: torch.Generator) -> list[list[int]]:
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    size = size if size > 0 else n
    return [order[k : k + size] for k in range(0, n, size)]


def _step(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], clip_grad: float | None) -> float:
    """Clip, then step unless the gradient is not finite (verl skips such steps). Returns the pre-clip norm."""
    max_norm = float(clip_grad) if clip_grad and clip_grad > 0 else float("inf")
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if math.isfinite(norm):
        optimizer.step()
    else:
        logger.warning("gradient norm is %s: skipping this optimizer step", norm)
    optimizer.zero_grad(set_to_none=True)
    return norm


def update_policy(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: EpisodeBatch,
    settings: PPOSettings,
    *,
    generator: torch.Generator | None = None,
    check_logprobs: bool = True,
) -> dict[str, float]:
    """``ppo_epochs`` × mini-batches of the clipped PPO update on ``batch`` (advantages already computed).

    With ``check_logprobs`` (the policy has not changed since the rollout), every token scored before the first
    optimizer step is compared with its rollout log-prob: the max |Δ| is ``actor/rollout_logprob_diff``; above
    ``settings.logprob_tolerance`` this raises, since the ratio would be taken against the wrong behaviour policy.
    """
    if batch.advantages is None:
        raise ValueError("compute the batch's advantages first")
    if settings.use_kl_loss and batch.ref_logprobs is None:
        raise ValueError("use_kl_loss needs the reference model's log-probs (batch.ref_logprobs)")
    generator = generator or torch.Generator().manual_seed(settings.seed)
    device = _device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    lengths = batch.lengths
    model.train()
    mean = _Mean()
    stepped, diff, checked = False, 0.0, 0
    grad_norms: list[float] = []
    optimizer.zero_grad(set_to_none=True)
    for _epoch in range(settings.ppo_epochs):
        for mini in _minibatches(len(batch), settings.mini_batch_episodes, settings.shuffle, generator):
            mini_tokens = sum(lengths[i] for i in mini)
            scale = settings.loss_scale_factor or max(lengths[i] for i in mini)
            agg = {
                "loss_agg_mode": settings.loss_agg_mode,
                "batch_num_tokens": mini_tokens,
                "global_batch_size": len(mini),
                "loss_scale_factor": scale,
            }
            for micro in micro_batches(mini, batch.samples, settings.micro_batch_episodes, settings.max_token_len):
                lens = [lengths[i] for i in micro]
                packed = pack_batch([batch.samples[i] for i in micro])
                mask = algos.response_mask(lens, device=device)
                old = _rows([batch.old_logprobs[i] for i in micro], device)
                advantages = _rows([batch.advantages[i] for i in micro], device)
                ref = _rows([batch.ref_logprobs[i] for i in micro], device) if settings.use_kl_loss else None
                loss_of = functools.partial(
                    _policy_loss,
                    lens=lens,
                    old=old,
                    advantages=advantages,
                    ref=ref,
                    mask=mask,
                    settings=settings,
                    agg=agg,
                )
                lp, metrics = _actor_backward(model, packed, loss_of, old[mask.bool()], settings)
                if check_logprobs and not stepped:
                    logprobs = algos.pad_episodes(algos.split_episodes(lp.float(), lens))
                    delta = ((logprobs - old).abs() * mask).max()
                    diff, checked = max(diff, float(delta)), checked + sum(lens)
                # the losses are scaled to the mini-batch, so its micro-batch losses sum to the mini-batch loss:
                # report the mean over mini-batches of those sums, and token-weighted means of the ratios
                share = sum(lens) / mini_tokens
                mean.add({k: v / share for k, v in metrics.items() if k in _SUMMED}, share)
                mean.add({k: v for k, v in metrics.items() if k not in _SUMMED}, sum(lens))
            tolerance = settings.logprob_tolerance
            if check_logprobs and not stepped and tolerance is not None and diff > tolerance:
                optimizer.zero_grad(set_to_none=True)
                raise RuntimeError(
                    f"the packed forward does not reproduce the rollout log-probs: max |Δ| = {diff:.3e} over "
                    f"{checked} tokens > mem1.logprob_tolerance={tolerance:g}. The PPO ratio would be "
                    "taken against the wrong behaviour policy. Run in float32, check the attention backend "
                    "(mem1 parity), or raise the tolerance knowingly."
                )
            grad_norms.append(_step(optimizer, params, settings.clip_grad))
            stepped = True
    out = mean.result()
    out["actor/grad_norm"] = float(np.mean(grad_norms)) if grad_norms else 0.0
    if check_logprobs:
        out["actor/rollout_logprob_diff"] = diff
        out["actor/rollout_logprob_checked_tokens"] = float(checked)
    return out


_SUMMED = ("actor/pg_loss", "actor/entropy", "actor/kl_loss", "critic/vf_loss")


def _policy_loss(
    lp: torch.Tensor,
    ent: torch.Tensor,
    *,
    lens: list[int],
    old: torch.Tensor,
    advantages: torch.Tensor,
    ref: torch.Tensor | None,
    mask: torch.Tensor,
    settings: PPOSettings,
    agg: dict[str, Any],
) -> tuple[torch.Tensor, dict[str, float]]:
    """The actor's loss from packed-order log-probs and entropies: PPO policy loss, minus the entropy bonus, plus
    the KL loss, on ``[B, T]`` rows of episodes of ``lens`` generated tokens."""
    logprobs = algos.pad_episodes(algos.split_episodes(lp.float(), lens))
    entropy = algos.pad_episodes(algos.split_episodes(ent.float(), lens))
    pg_loss, pg_metrics = algos.policy_loss(
        old,
        logprobs,
        advantages,
        mask,
        clip_ratio=settings.clip_ratio,
        clip_ratio_low=settings.clip_ratio_low,
        clip_ratio_high=settings.clip_ratio_high,
        clip_ratio_c=settings.clip_ratio_c,
        loss_mode=settings.loss_mode,
        actor_config=settings.actor_config,
        **agg,
    )
    loss = pg_loss
    ent_term = algos.entropy_loss(entropy, mask, **agg)
    if settings.entropy_coeff:
        loss = loss - settings.entropy_coeff * ent_term
    metrics = {**pg_metrics, "actor/pg_loss": float(pg_loss.detach()), "actor/entropy": float(ent_term.detach())}
    if ref is not None:
        kl = algos.kl_loss(logprobs, ref, mask, kl_type=settings.kl_loss_type, **agg)
        loss = loss + settings.kl_loss_coef * kl
        metrics["actor/kl_loss"] = float(kl.detach())
    return loss, metrics


def _actor_backward(
    model: torch.nn.Module, packed: PackedSample, loss_of: Callable, old: torch.Tensor, settings: PPOSettings
) -> tuple[torch.Tensor, dict[str, float]]:
    """Back-propagate ``loss_of(logprobs, entropies)`` of a micro-batch; return its log-probs and metrics.

    With ``segment_group_tokens``, group by group: each group's loss sees its own tokens' log-probs and the old
    ones (``old``, packed order) elsewhere. The loss is a sum of per-token terms (``GROUPABLE_LOSS_MODES``), so
    the groups' gradients add up to the full loss's gradient; the metrics come from the full loss, recomputed
    without gradient.
    """
    if not settings.segment_group_tokens:
        backend, compile_flex = settings.backend, settings.compile_flex
        lp, ent = packed_logprobs_and_entropy(model, packed, backend=backend, compile_flex=compile_flex)
        loss, metrics = loss_of(lp, ent)
        loss.backward()
        return lp.detach(), metrics
    zeros = torch.zeros_like(old)

    def group_loss(lp_g: torch.Tensor, ent_g: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return loss_of(old.index_put((index,), lp_g), zeros.index_put((index,), ent_g))[0]

    lp, ent = streamed_logprobs_and_entropy(
        model, packed, group_loss, group_tokens=settings.segment_group_tokens, backend=settings.backend
    )
    with torch.no_grad():
        _, metrics = loss_of(lp, ent)
    return lp, metrics


def update_critic(
    critic: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: EpisodeBatch,
    settings: PPOSettings,
    *,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """verl's clipped value loss against the GAE returns, ``critic.ppo_epochs`` × mini-batches."""
    if batch.returns is None or batch.values is None:
        raise ValueError("the critic update needs batch.values and batch.returns")
    generator = generator or torch.Generator().manual_seed(settings.seed + 1)
    device = _device(critic)
    params = [p for p in critic.parameters() if p.requires_grad]
    lengths = batch.lengths
    critic.train()
    mean = _Mean()
    grad_norms = []
    optimizer.zero_grad(set_to_none=True)
    for _epoch in range(settings.critic_ppo_epochs):
        for mini in _minibatches(len(batch), settings.mini_batch_episodes, settings.shuffle, generator):
            mini_tokens = sum(lengths[i] for i in mini)
            for micro in micro_batches(mini, batch.samples, settings.micro_batch_episodes, settings.max_token_len):
                lens = [lengths[i] for i in micro]
                packed = pack_batch([batch.samples[i] for i in micro])
                mask = algos.response_mask(lens, device=device)
                old = _rows([batch.values[i] for i in micro], device)
                returns = _rows([batch.returns[i] for i in micro], device)
                agg = {
                    "loss_agg_mode": settings.loss_agg_mode,
                    "batch_num_tokens": mini_tokens,
                    "global_batch_size": len(mini),
                    "loss_scale_factor": settings.loss_scale_factor or max(lengths[i] for i in mini),
                }
                loss_of = functools.partial(
                    _value_loss, lens=lens, returns=returns, old=old, mask=mask, settings=settings, agg=agg
                )
                loss, clipfrac = _critic_backward(critic, packed, loss_of, old[mask.bool()], settings)
                share = sum(lens) / mini_tokens
                mean.add({"critic/vf_loss": float(loss.detach()) / share}, share)
                mean.add({"critic/vf_clipfrac": clipfrac}, sum(lens))
            grad_norms.append(_step(optimizer, params, settings.critic_clip_grad))
    out = mean.result()
    out["critic/grad_norm"] = float(np.mean(grad_norms)) if grad_norms else 0.0
    return out


def _value_loss(
    values: torch.Tensor,
    *,
    lens: list[int],
    returns: torch.Tensor,
    old: torch.Tensor,
    mask: torch.Tensor,
    settings: PPOSettings,
    agg: dict[str, Any],
) -> tuple[torch.Tensor, float]:
    """verl's clipped value loss from packed-order values, on ``[B, T]`` rows, and its clip fraction."""
    vpreds = algos.pad_episodes(algos.split_episodes(values, lens))
    return algos.value_loss(vpreds, returns, old, mask, cliprange_value=settings.cliprange_value, **agg)


def _critic_backward(
    critic: torch.nn.Module, packed: PackedSample, loss_of: Callable, old: torch.Tensor, settings: PPOSettings
) -> tuple[torch.Tensor, float]:
    """Back-propagate ``loss_of(values)`` of a micro-batch (group by group with ``segment_group_tokens``, as
    ``_actor_backward``: the clipped value loss is a sum of per-token terms); return the loss and clip fraction."""
    if not settings.segment_group_tokens:
        values = packed_values(critic, packed, settings.backend, compile_flex=settings.compile_flex)
        loss, clipfrac = loss_of(values)
        loss.backward()
        return loss.detach(), clipfrac

    def group_loss(values_g: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return loss_of(old.index_put((index,), values_g))[0]

    values = streamed_values(
        critic, packed, group_loss, group_tokens=settings.segment_group_tokens, backend=settings.backend
    )
    with torch.no_grad():
        return loss_of(values)


# ------------------------------------------------------------------------------------------- optimisation


def make_optimizer(model: torch.nn.Module, optim_cfg: Any) -> torch.optim.Optimizer:
    """AdamW from verl's ``optim`` section (lr, betas, weight_decay)."""
    betas = tuple(float(b) for b in (_get(optim_cfg, "betas") or (0.9, 0.999)))
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=float(optim_cfg.lr),
        betas=betas,  # type: ignore[arg-type]
        weight_decay=float(_get(optim_cfg, "weight_decay", 0.01)),
    )


def make_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Any, total_steps: int):
    """verl's warmup schedules (``lr_warmup_steps`` or ``lr_warmup_steps_ratio``; constant or cosine)."""
    from verl.utils.torch_functional import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    warmup = int(_get(optim_cfg, "lr_warmup_steps", -1) or -1)
    if warmup < 0:
        warmup = int(float(_get(optim_cfg, "lr_warmup_steps_ratio", 0.0) or 0.0) * total_steps)
    if str(_get(optim_cfg, "lr_scheduler_type", "constant")) == "cosine":
        return get_cosine_schedule_with_warmup(
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=total_steps,
            min_lr_ratio=float(_get(optim_cfg, "min_lr_ratio", 0.0) or 0.0),
            num_cycles=float(_get(optim_cfg, "num_cycles", 0.5)),
        )
    return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)


# -------------------------------------------------------------------------------------------------- trainer


def _rng_state(extra: dict[str, torch.Generator]) -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in extra.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], extra: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in extra.items():
        if k in state.get("generators", {}):
            g.set_state(state["generators"][k])


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint ``latest_checkpointed_iteration.txt`` names under ``root`` (verl's convention), if any."""
    tracker = Path(root) / TRACKER_FILE
    if not tracker.is_file():
        return None
    try:
        step = int(tracker.read_text().strip())
    except ValueError:
        return None
    path = Path(root) / STEP_DIR.format(step)
    return path if (path / "trainer_state.pt").is_file() else None


class Mem1Trainer:
    """Rollout → pack → advantages → PPO, one process. ``fit()`` runs to ``trainer.total_training_steps``."""

    def __init__(self, cfg: DictConfig, *, progress: bool = True) -> None:
        validate_config(cfg)
        self.cfg = cfg
        self.progress = progress
        self.settings = PPOSettings.from_config(cfg)
        self.estimator = str(cfg.algorithm.adv_estimator)
        self.use_critic = self.estimator == algos.GAE
        self.use_kl_in_reward = bool(cfg.algorithm.use_kl_in_reward)
        self.use_ref = self.use_kl_in_reward or self.settings.use_kl_loss
        self.root = Path(str(cfg.trainer.default_local_dir)).expanduser()
        self.seed = int(_get(cfg, "mem1.seed"))
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self._stack = contextlib.ExitStack()
        self.device = self._pick_device()
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            str(_get(cfg, "mem1.dtype"))
        ]
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)

        self._tracking = None
        self._data_epoch, self._data_pos = 0, 0
        self._shuffle_gen = torch.Generator().manual_seed(self.settings.seed)
        try:
            self.url = self._start_environment()
            self.train_tasks = self._load_tasks("train")
            validating = int(cfg.trainer.test_freq) > 0 or bool(cfg.trainer.val_before_train)
            self.val_tasks = self._load_tasks("val") if validating else []
            self.tags = self._tag_set()
            per_epoch = max(1, len(self.train_tasks) // int(cfg.data.train_batch_size))
            steps = _get(cfg, "trainer.total_training_steps")
            self.total_steps = int(steps) if steps is not None else per_epoch * int(cfg.trainer.total_epochs)
            self.model_path = self._resolve_model_path(str(cfg.actor_rollout_ref.model.path))
            self._load_models()
            self._resume()
        except BaseException:
            self._stack.close()
            raise

    # ------------------------------------------------------------------------------------------ setup

    def _pick_device(self) -> torch.device:
        device = str(self.cfg.trainer.device)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(device)

    def _load_tasks(self, split: str) -> list[Task]:
        from verl_mem1.rollout.tasks import load_tasks

        key = "data.train_files" if split == "train" else "data.val_files"
        limit_key = "data.train_max_samples" if split == "train" else "data.val_max_samples"
        limit = _get(self.cfg, limit_key)
        limit = int(limit) if limit is not None and int(limit) > 0 else None
        files = _as_list(_get(self.cfg, key))
        tasks: list[Task] = []
        if not files and self.env == "webshop":
            tasks = self._webshop_goals(str(_get(self.cfg, f"mem1.{split}_goals")))
        elif not files:
            files = [self._compose_tasks(split)]
        for path in files:
            tasks.extend(load_tasks(Path(str(path)).expanduser()))
        tasks = tasks[:limit] if limit else tasks
        if split == "train" and len(tasks) < int(self.cfg.data.train_batch_size):
            raise ConfigError(
                f"data.train_batch_size={self.cfg.data.train_batch_size}: only {len(tasks)} training tasks"
            )
        return tasks

    def _tag_set(self) -> str:
        """``mem1.tags``, else the tag set the tasks were composed with (``extra_info.tags``), else paper."""
        tags = _get(self.cfg, "mem1.tags")
        if tags is not None:
            return str(tags)
        found = {str(t.extra_info["tags"]) for t in self.train_tasks if t.extra_info.get("tags")}
        if len(found) > 1:
            raise ConfigError(f"mem1.tags=None: the training tasks mix tag sets {sorted(found)}; set mem1.tags")
        return found.pop() if found else ("webshop" if self.env == "webshop" else "paper")

    def _compose_tasks(self, split: str) -> Path:
        """Compose N-objective tasks from a bundled (or ``KIND:PATH``) question source, once, under the run dir."""
        from verl_mem1.tasks.compose import compose_tasks, write_tasks_parquet
        from verl_mem1.tasks.sources import load_source

        source = str(_get(self.cfg, f"mem1.{split}_source"))
        objectives = int(_get(self.cfg, "mem1.objectives"))
        out = self.root / "data" / f"{split}-{source.replace(':', '_').replace('/', '_')}-{objectives}obj.parquet"
        if not out.is_file():
            rows = compose_tasks(
                [load_source(source)],
                objectives=objectives,
                count=None,
                seed=self.seed,
                tags=str(_get(self.cfg, "mem1.tags") or "paper"),
                max_turns=_get(self.cfg, "mem1.max_turns"),
                split=split,
            )
            write_tasks_parquet(rows, out)
            print(f"composed {len(rows)} {split} tasks of {objectives} objective(s) from {source} into {out}")
        return out

    def _resolve_model_path(self, path: str) -> str:
        if path != "tiny":
            return path
        from verl_mem1.tiny_model import build_tiny_model

        out = self.root / "tiny_model"
        if not (out / "config.json").is_file():
            print(f"building the tiny random Qwen2 model (Qwen2.5 tokenizer) in {out}")
            build_tiny_model(out, seed=self.seed)
        return str(out)

    def _load_models(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = self.cfg
        start = latest_checkpoint(self.root) if str(cfg.trainer.resume_mode) == "auto" else None
        if str(cfg.trainer.resume_mode) == "resume_path":
            start = Path(str(cfg.trainer.resume_from_path)).expanduser()
            if not (start / "trainer_state.pt").is_file():
                raise ConfigError(f"trainer.resume_from_path={str(start)!r}: not a checkpoint (no trainer_state.pt)")
        self._resume_from = start
        policy_path = str(start / "actor") if start else self.model_path
        tokenizer_path = _get(cfg, "actor_rollout_ref.model.tokenizer_path") or self.model_path
        self.tokenizer = AutoTokenizer.from_pretrained(self._resolve_model_path(str(tokenizer_path)))
        self.policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=self.dtype).to(self.device)
        if _get(cfg, "mem1.segment_group_tokens") is not None and _plain_head(self.policy) is None:
            raise ConfigError(
                f"mem1.segment_group_tokens: {type(self.policy).__name__} has no plain linear LM head "
                f"(model types {', '.join(sorted(PLAIN_HEAD_MODEL_TYPES))}); set mem1.segment_group_tokens=null"
            )
        if bool(_get(cfg, "actor_rollout_ref.model.enable_gradient_checkpointing", False)):
            self.policy.gradient_checkpointing_enable()
        self.ref = None
        if self.use_ref:  # the reference is the initial policy, also when resuming
            self.ref = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype).to(self.device).eval()
            self.ref.requires_grad_(False)
        self.optimizer = make_optimizer(self.policy, cfg.actor_rollout_ref.actor.optim)
        self.scheduler = make_scheduler(self.optimizer, cfg.actor_rollout_ref.actor.optim, self.total_steps)
        self.critic = self.critic_optimizer = self.critic_scheduler = None
        if self.use_critic:
            from transformers import AutoModelForTokenClassification

            critic_path = str(start / "critic") if start else self._resolve_model_path(str(cfg.critic.model.path))
            self.critic = AutoModelForTokenClassification.from_pretrained(
                critic_path, num_labels=1, dtype=self.dtype
            ).to(self.device)
            if _get(cfg, "mem1.segment_group_tokens") is not None:
                try:
                    critic_parts(self.critic)
                except TypeError as exc:
                    raise ConfigError(f"mem1.segment_group_tokens: {exc}; set mem1.segment_group_tokens=null") from None
            self.critic_optimizer = make_optimizer(self.critic, cfg.critic.optim)
            self.critic_scheduler = make_scheduler(self.critic_optimizer, cfg.critic.optim, self.total_steps)
        self.kl_ctrl = None
        if self.use_kl_in_reward:
            from verl.trainer.ppo.core_algos import get_kl_controller

            self.kl_ctrl = get_kl_controller(cfg.algorithm.kl_ctrl)
        from verl_mem1.rollout.backends.hf_local import HFLocalBackend

        self.backend = HFLocalBackend(
            model=self.policy,
            tokenizer=self.tokenizer,
            max_batch_size=int(_get(cfg, "mem1.generate_batch_size")),
            seed=self.seed,
        )

    @property
    def env(self) -> str:
        return str(_get(self.cfg, "mem1.env"))

    def _webshop_goals(self, spec: str) -> list[Task]:
        from verl_mem1.rollout.environment import fetch_webshop_tasks

        return fetch_webshop_tasks(self.url, spec)

    def _make_environment(self):
        from verl_mem1.rollout.environment import RetrievalEnvironment, WebShopEnvironment

        timeout = float(_get(self.cfg, "mem1.retriever_timeout_s"))
        if self.env == "webshop":
            return WebShopEnvironment(self.url, timeout_s=timeout)
        return RetrievalEnvironment(self.url, topk=int(_get(self.cfg, "mem1.topk")), timeout_s=timeout)

    def _start_environment(self) -> str:
        """The environment server's URL; ``auto`` serves the bundled one (HotpotQA BM25 or WebShop) on loopback."""
        if self.env == "webshop":
            url = str(_get(self.cfg, "mem1.webshop_url"))
            if url != "auto":
                return url
            from env_servers.webshop.server import bundled_shop_server

            server = self._stack.enter_context(bundled_shop_server())
            print(f"serving the bundled WebShop on {server.url}")
            return server.url
        url = str(_get(self.cfg, "mem1.retriever_url"))
        if url != "auto":
            return url
        from env_servers.background import BackgroundServer
        from env_servers.retrieval.corpus import build_hotpotqa_corpus
        from env_servers.retrieval.index import build_index, load_retriever
        from env_servers.retrieval.server import create_app

        cache = self.root / "retriever"
        index_dir = cache / "index-bm25"
        if not (index_dir / "meta.json").is_file():
            print(f"building the bundled HotpotQA corpus and its BM25 index in {cache}")
            build_hotpotqa_corpus(None, cache / "hotpotqa-corpus.jsonl")
            build_index(cache / "hotpotqa-corpus.jsonl", index_dir, encoder="bm25", show_progress=False)
        server = self._stack.enter_context(BackgroundServer(create_app(load_retriever(index_dir))))
        print(f"serving the HotpotQA BM25 retriever on {server.url}")
        return server.url

    def _resume(self) -> None:
        start = self._resume_from
        if start is None:
            return
        state = torch.load(start / "trainer_state.pt", map_location="cpu", weights_only=False)
        self.global_step = int(state["global_step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.critic is not None and "critic_optimizer" in state:
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
            self.critic_scheduler.load_state_dict(state["critic_scheduler"])
        if self.kl_ctrl is not None and "kl_coef" in state:
            self.kl_ctrl.value = state["kl_coef"]
        self._data_epoch, self._data_pos = state["data"]["epoch"], state["data"]["position"]
        _set_rng_state(state["rng"], self._generators())
        print(f"resumed from {start} at step {self.global_step}")

    def _generators(self) -> dict[str, torch.Generator]:
        return {"rollout": self.backend.generator, "shuffle": self._shuffle_gen}

    # ------------------------------------------------------------------------------------------- data

    def _epoch_order(self, epoch: int) -> list[int]:
        n = len(self.train_tasks)
        if not bool(_get(self.cfg, "data.shuffle", True)):
            return list(range(n))
        seed = _get(self.cfg, "data.seed")
        rng = random.Random(f"{self.seed if seed is None else seed}:{epoch}")
        order = list(range(n))
        rng.shuffle(order)
        return order

    def next_tasks(self) -> list[Task]:
        """The next ``train_batch_size`` tasks (epoch after epoch, reshuffled each epoch; resumable)."""
        size = int(self.cfg.data.train_batch_size)
        out: list[Task] = []
        while len(out) < size:
            order = self._epoch_order(self._data_epoch)
            take = order[self._data_pos : self._data_pos + size - len(out)]
            out.extend(self.train_tasks[i] for i in take)
            self._data_pos += len(take)
            if self._data_pos >= len(order):
                self._data_epoch, self._data_pos = self._data_epoch + 1, 0
        return out

    # ---------------------------------------------------------------------------------------- rollout

    def episode_config(self, *, validation: bool = False):
        from verl_mem1.rollout.episode import EpisodeConfig

        rollout = self.cfg.actor_rollout_ref.rollout
        temperature = float(rollout.temperature)
        top_p, top_k = float(rollout.top_p), int(rollout.top_k)
        if validation:
            temperature = float(_get(self.cfg, "actor_rollout_ref.rollout.val_kwargs.temperature", 0.0) or 0.0)
            if not bool(_get(self.cfg, "actor_rollout_ref.rollout.val_kwargs.do_sample", False)):
                temperature = 0.0
            top_p, top_k = 1.0, -1
        max_new_tokens = _get(self.cfg, "mem1.max_new_tokens") or int(rollout.response_length)
        return EpisodeConfig(
            max_turns=_get(self.cfg, "mem1.max_turns"),
            max_new_tokens=int(max_new_tokens),
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            context=str(_get(self.cfg, "mem1.context")),
            tags=self.tags,
            on_invalid=str(_get(self.cfg, "mem1.on_invalid")),
            require_state=bool(_get(self.cfg, "mem1.require_state")),
            max_context_tokens=_get(self.cfg, "mem1.max_context_tokens"),
            max_observation_tokens=_get(self.cfg, "mem1.max_observation_tokens"),
            invalid_action_penalty=float(_get(self.cfg, "mem1.invalid_action_penalty")),
        )

    def reward(self, answer: str | None, ground_truth: list[list[str]]) -> float:
        from verl_mem1.tasks.rewards import score_answer

        score = score_answer(answer, ground_truth, reduce=str(_get(self.cfg, "mem1.reward_reduce")))
        return score.em if str(_get(self.cfg, "mem1.reward_metric")) == "em" else score.f1

    def rollout(self, tasks: Sequence[Task], *, validation: bool = False) -> list[EpisodeRecord]:
        """Play the tasks with the current policy (eval mode, no grad); records come back in task order."""
        from verl_mem1.rollout.runner import run_episodes

        config = self.episode_config(validation=validation)
        env = self._make_environment()
        self.policy.eval()

        async def go():
            try:
                return await run_episodes(
                    tasks,
                    self.backend,
                    env,
                    self.tokenizer,
                    config,
                    concurrency=int(_get(self.cfg, "mem1.concurrency")),
                    reward_fn=self.reward,
                    progress=False,
                )
            finally:
                await env.aclose()

        with torch.no_grad():
            return asyncio.run(go())

    # ------------------------------------------------------------------------------------------- step

    def train_step(self) -> dict[str, float]:
        """One rollout + update; returns the step's metrics."""
        from verl_mem1.evaluation.metrics import episode_metrics, summarize

        cfg = self.cfg
        n = int(cfg.actor_rollout_ref.rollout.n)
        t_step = time.perf_counter()
        tasks = self.next_tasks()
        episodes_tasks = [task for task in tasks for _ in range(n)]
        group_ids = [f"{self.global_step + 1}/{slot}/{task.id}" for slot, task in enumerate(tasks) for _ in range(n)]
        t0 = time.perf_counter()
        records = self.rollout(episodes_tasks)
        timing = {"timing_s/rollout": time.perf_counter() - t0}
        scores = [float(r.reward or 0.0) for r in records]
        batch = build_batch(records, scores, group_ids)
        metrics: dict[str, float] = {}

        if self.ref is not None:
            t0 = time.perf_counter()
            batch.ref_logprobs = batch_logprobs(self.ref, batch.samples, self.settings)
            timing["timing_s/ref"] = time.perf_counter() - t0
            kld = [(old - ref) for old, ref in zip(batch.old_logprobs, batch.ref_logprobs, strict=True)]
            # k3 (low_var_kl) of the rollout policy against the reference, per token
            k3 = torch.cat([torch.exp(-d) - 1 + d for d in kld])
            metrics["actor/ref_kl"] = float(k3.mean())
        if self.critic is not None:
            t0 = time.perf_counter()
            batch.values = batch_values(self.critic, batch.samples, self.settings)
            timing["timing_s/values"] = time.perf_counter() - t0
        metrics.update(
            compute_batch_advantages(
                batch,
                self.estimator,
                gamma=float(cfg.algorithm.gamma),
                lam=float(cfg.algorithm.lam),
                norm_adv_by_std_in_grpo=bool(cfg.algorithm.norm_adv_by_std_in_grpo),
                algo_config=cfg.algorithm,
                kl_ctrl=self.kl_ctrl,
                kl_penalty=str(cfg.algorithm.kl_penalty),
            )
        )
        if self.critic is not None:
            t0 = time.perf_counter()
            metrics.update(update_critic(self.critic, self.critic_optimizer, batch, self.settings))
            self.critic_scheduler.step()
            timing["timing_s/update_critic"] = time.perf_counter() - t0
        if self.global_step >= int(cfg.trainer.critic_warmup):
            t0 = time.perf_counter()
            metrics.update(
                update_policy(self.policy, self.optimizer, batch, self.settings, generator=self._shuffle_gen)
            )
            metrics["actor/lr"] = float(self.scheduler.get_last_lr()[0])
            self.scheduler.step()
            timing["timing_s/update_actor"] = time.perf_counter() - t0
        self.policy.eval()

        summary = summarize([episode_metrics(r, reduce=str(_get(cfg, "mem1.reward_reduce"))) for r in records])
        packed = [packed_token_count(r) for r in batch.records]
        per_turn = [per_turn_token_count(r) for r in batch.records]
        generated = sum(batch.lengths)
        step_s = time.perf_counter() - t_step
        metrics.update(
            {
                "reward/mean": float(np.mean(scores)),
                "reward/max": float(np.max(scores)),
                "reward/min": float(np.min(scores)),
                **_present({"reward/em": summary["em"], "reward/f1": summary["f1"]}),
                **_present({"reward/success_rate": summary["success_rate"]}),
                "episode/answered_rate": summary["answered_rate"],
                "episode/turns": summary["turns"],
                "episode/invalid_action_rate": summary["invalid_action_rate"],
                "episode/generated_tokens": summary["generated_tokens"],
                "mem1/peak_tokens": summary["peak_tokens"],
                "mem1/peak_tokens_max": float(summary["peak_tokens_max"]),
                "mem1/dependency": summary["dependency"],
                "mem1/packed_length": float(np.mean(packed)),
                "mem1/per_turn_length": float(np.mean(per_turn)),
                "mem1/per_turn_over_packed": float(sum(per_turn) / sum(packed)),
                "perf/episodes": float(len(records)),
                "perf/tokens_per_s": (sum(packed) + generated) / step_s,
                "perf/rollout_tokens_per_s": generated / timing["timing_s/rollout"],
                "timing_s/step": step_s,
                **timing,
            }
        )
        return metrics

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Greedy (``rollout.val_kwargs``) episodes on the validation tasks: accuracy and efficiency."""
        from verl_mem1.evaluation.metrics import episode_metrics, summarize

        if not self.val_tasks:
            return {}
        records = self.rollout(self.val_tasks, validation=True)
        summary = summarize([episode_metrics(r, reduce=str(_get(self.cfg, "mem1.reward_reduce"))) for r in records])
        return {
            "val/reward": float(np.mean([r.reward or 0.0 for r in records])),
            **_present({"val/em": summary["em"], "val/f1": summary["f1"], "val/success_rate": summary["success_rate"]}),
            "val/peak_tokens": summary["peak_tokens"],
            "val/turns": summary["turns"],
        }

    # ------------------------------------------------------------------------------------- checkpoint

    def save_checkpoint(self) -> Path:
        """Write ``global_step_N/`` and point verl's tracker file at it; prune beyond ``max_actor_ckpt_to_keep``."""
        from omegaconf import OmegaConf

        path = self.root / STEP_DIR.format(self.global_step)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.policy.save_pretrained(tmp / "actor")
        self.tokenizer.save_pretrained(tmp / "actor")
        state: dict[str, Any] = {
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data": {"epoch": self._data_epoch, "position": self._data_pos},
            "rng": _rng_state(self._generators()),
        }
        if self.critic is not None:
            self.critic.save_pretrained(tmp / "critic")
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
            state["critic_scheduler"] = self.critic_scheduler.state_dict()
        if self.kl_ctrl is not None:
            state["kl_coef"] = float(self.kl_ctrl.value)
        torch.save(state, tmp / "trainer_state.pt")
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        (self.root / TRACKER_FILE).write_text(str(self.global_step))
        keep = _get(self.cfg, "trainer.max_actor_ckpt_to_keep")
        if keep:
            steps = sorted(
                int(p.name.rsplit("_", 1)[1])
                for p in self.root.glob("global_step_*")
                if p.is_dir() and p.name.rsplit("_", 1)[1].isdigit()
            )
            for old in steps[: -int(keep)]:
                shutil.rmtree(self.root / STEP_DIR.format(old), ignore_errors=True)
        return path

    # -------------------------------------------------------------------------------------------- fit

    def tracking(self):
        if self._tracking is None:
            from omegaconf import OmegaConf
            from verl.utils.tracking import Tracking

            loggers = self.cfg.trainer.logger
            loggers = [loggers] if isinstance(loggers, str) else list(loggers)
            self._tracking = Tracking(
                project_name=str(self.cfg.trainer.project_name),
                experiment_name=str(self.cfg.trainer.experiment_name),
                default_backend=loggers,
                config=OmegaConf.to_container(self.cfg, resolve=True),
            )
        return self._tracking

    def fit(self) -> list[dict[str, float]]:
        """Train from ``global_step`` to ``total_steps``; returns every step's metrics."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        tracking = self.tracking()
        save_freq, test_freq = int(cfg.trainer.save_freq), int(cfg.trainer.test_freq)
        if self.global_step >= self.total_steps:
            print(f"nothing to do: at step {self.global_step} of {self.total_steps}")
            return self.history
        if self.global_step == 0 and bool(cfg.trainer.val_before_train) and self.val_tasks:
            tracking.log(self.validate(), step=0)
        bar = tqdm(
            total=self.total_steps, initial=self.global_step, desc="training", unit="step", disable=not self.progress
        )
        try:
            while self.global_step < self.total_steps:
                metrics = self.train_step()
                self.global_step += 1
                last = self.global_step == self.total_steps
                if test_freq > 0 and (self.global_step % test_freq == 0 or last):
                    metrics.update(self.validate())
                if save_freq > 0 and (self.global_step % save_freq == 0 or last):
                    t0 = time.perf_counter()
                    self.save_checkpoint()
                    metrics["timing_s/save_checkpoint"] = time.perf_counter() - t0
                metrics["training/global_step"] = float(self.global_step)
                self.history.append(metrics)
                tracking.log(data=metrics, step=self.global_step)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics.get('actor/ppo_kl', 0.0):.2e}")
        finally:
            bar.close()
        return self.history

    def close(self) -> None:
        if self._tracking is not None:
            with contextlib.suppress(Exception):
                self._tracking.finish()
            self._tracking = None
        self._stack.close()

    def __enter__(self) -> Mem1Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
