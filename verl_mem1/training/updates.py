"""The PPO updates of the single-machine trainer on packed episodes: settings, no-grad scoring, the policy and
critic updates with their losses (verl's ``core_algos`` through ``algorithms.py``), and the optimizer set-up.

Every micro-batch is one packed row (``layout.pack_batch``); with ``segment_group_tokens`` an episode is
back-propagated group by group (``streaming.py``), which gives the packed row's gradient for per-token losses.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from verl_mem1.config import Mem1Config
from verl_mem1.training import algorithms as algos
from verl_mem1.training.attention import attention_backend
from verl_mem1.training.batch import EpisodeBatch
from verl_mem1.training.forward import packed_logprobs, packed_logprobs_and_entropy, packed_values
from verl_mem1.training.layout import PackedSample, pack_batch
from verl_mem1.training.streaming import streamed_logprobs_and_entropy, streamed_values
from verl_mem1.training.validation import cfg_get as _get

if TYPE_CHECKING:
    from omegaconf import DictConfig

logger = logging.getLogger(__name__)


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
    backend: str = "auto"  # mem1.attention, resolved per model device by attention.attention_backend
    compile_flex: bool = False
    logprob_tolerance: float | None = 1e-4
    segment_group_tokens: int | None = None
    critic_ppo_epochs: int = 1
    cliprange_value: float = 0.5
    critic_clip_grad: float | None = 1.0
    actor_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: DictConfig, mem1: Mem1Config) -> PPOSettings:
        """Read ``actor_rollout_ref.actor``/``critic`` and the run's ``Mem1Config``."""
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
            backend=mem1.attention,
            compile_flex=mem1.compile_flex,
            logprob_tolerance=mem1.logprob_tolerance,
            segment_group_tokens=mem1.segment_group_tokens,
            critic_ppo_epochs=int(_get(cfg, "critic.ppo_epochs", 1) or 1),
            cliprange_value=float(_get(cfg, "critic.cliprange_value", 0.5)),
            critic_clip_grad=_get(cfg, "critic.optim.clip_grad", 1.0),
            actor_config=OmegaConf.to_container(actor, resolve=True),
        )


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
    backend = attention_backend(settings.backend, _device(model).type)
    out: list[torch.Tensor] = []
    for micro in micro_batches(range(len(samples)), samples, settings.micro_batch_episodes, settings.max_token_len):
        packed = pack_batch([samples[i] for i in micro])
        lp = packed_logprobs(model, packed, backend=backend, compile_flex=settings.compile_flex)
        out.extend(x.float().cpu() for x in algos.split_episodes(lp, [samples[i].num_generated for i in micro]))
    return out


@torch.no_grad()
def batch_values(critic: torch.nn.Module, samples: Sequence[PackedSample], settings: PPOSettings) -> list[torch.Tensor]:
    """Per-episode critic values at the generated tokens (no grad)."""
    backend = attention_backend(settings.backend, _device(critic).type)
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
        backend, compile_flex = attention_backend(settings.backend, _device(model).type), settings.compile_flex
        lp, ent = packed_logprobs_and_entropy(model, packed, backend=backend, compile_flex=compile_flex)
        loss, metrics = loss_of(lp, ent)
        loss.backward()
        return lp.detach(), metrics
    zeros = torch.zeros_like(old)

    def group_loss(lp_g: torch.Tensor, ent_g: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return loss_of(old.index_put((index,), lp_g), zeros.index_put((index,), ent_g))[0]

    lp, ent = streamed_logprobs_and_entropy(
        model,
        packed,
        group_loss,
        group_tokens=settings.segment_group_tokens,
        backend=attention_backend(settings.backend, _device(model).type),
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
        backend = attention_backend(settings.backend, _device(critic).type)
        values = packed_values(critic, packed, backend, compile_flex=settings.compile_flex)
        loss, clipfrac = loss_of(values)
        loss.backward()
        return loss.detach(), clipfrac

    def group_loss(values_g: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return loss_of(old.index_put((index,), values_g))[0]

    values = streamed_values(
        critic,
        packed,
        group_loss,
        group_tokens=settings.segment_group_tokens,
        backend=attention_backend(settings.backend, _device(critic).type),
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
