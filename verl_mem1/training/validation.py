"""Start-up checks of the verl keys the single-machine trainer reads (``mem1:`` keys check themselves in
``Mem1Config``): a bad value fails before any model is loaded, with a message that names the key."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from verl_mem1.config import ConfigError, Mem1Config
from verl_mem1.training import algorithms as algos

if TYPE_CHECKING:
    from omegaconf import DictConfig

logger = logging.getLogger(__name__)

RESUME_MODES = ("auto", "disable", "resume_path")
# Loss modes whose loss is a weighted sum of per-token terms, so segment groups can back-propagate it in parts.
GROUPABLE_LOSS_MODES = ("vanilla", "gpg", "cispo")


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """``OmegaConf.select`` that treats ``???`` as missing."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key, default=default, throw_on_missing=False)
    return default if value == "???" else value


_get = cfg_get


def _fail(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{key}={value!r}: {why}")


def validate_config(cfg: DictConfig) -> Mem1Config:
    """Check every value the trainer reads; raise ``ConfigError`` naming the key before anything is loaded.

    Returns:
        The run's ``Mem1Config`` (the ``mem1:`` section, validated by the dataclass itself).
    """

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
    choice("actor_rollout_ref.actor.policy_loss.loss_mode", algos.LOSS_MODES)
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

    mem1 = Mem1Config.from_trainer_config(cfg)
    if mem1.segment_group_tokens is not None:
        mode = _get(cfg, "actor_rollout_ref.actor.policy_loss.loss_mode", "vanilla")
        if mode not in GROUPABLE_LOSS_MODES:
            raise _fail(
                "mem1.segment_group_tokens",
                mem1.segment_group_tokens,
                f"segment groups need a per-token loss ({', '.join(GROUPABLE_LOSS_MODES)}); loss_mode {mode!r} "
                "couples tokens: set mem1.segment_group_tokens=null",
            )
    if _get(cfg, "data.train_files") is None and not mem1.train_source:
        raise _fail("mem1.train_source", None, "give data.train_files or a question source to compose tasks from")
    for key in ("data.train_files", "data.val_files"):
        for path in as_list(_get(cfg, key)):
            if not Path(str(path)).expanduser().is_file():
                raise _fail(key, str(path), "file not found")
    return mem1


def present_metrics(metrics: dict[str, float | None]) -> dict[str, float]:
    """Metrics that apply to this run (EM/F1 for QA, success rate for WebShop)."""
    return {k: float(v) for k, v in metrics.items() if v is not None}


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | Path):
        return [value]
    return list(value)
