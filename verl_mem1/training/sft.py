"""Supervised fine-tuning on MEM1 episode records, on the packed layout RL trains on (``mem1 sft``).

An episode record (``mem1 rollout``/``eval`` output filtered by reward, or ``mem1 trajectories --policy oracle``)
is packed exactly as the RL trainer packs it (``layout.pack_episode``): every turn's context copy and its
generated tokens, positions restarting after the prompt, each segment attending to the prompt and itself. The
loss is the mean negative log-likelihood (at temperature 1) of the **generated tokens only**: the prompt, the
observations and the copied context are read, never learned. That is also the paper's SFT baseline.

Practice a user expects: a validation split of the episodes (``data.val_fraction``, or ``data.val_files``) with a
validation loss, verl's optimizer and LR schedules (``optim.*``: warm-up, constant or cosine), gradient
accumulation (``data.train_batch_size`` episodes per optimizer step, ``data.micro_batch_size_per_gpu`` per forward),
a seed, checkpoints in verl's layout (``global_step_N/actor`` is a Hugging Face folder that ``mem1 eval``,
``mem1 train`` and verl load) and exact resume (``trainer.resume_mode=auto``).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from verl_mem1.config import ConfigError, Mem1Config, attention_backend
from verl_mem1.training.checkpoint import latest_checkpoint, read_state, rng_state, set_rng_state, write_checkpoint
from verl_mem1.training.data import BatchSampler
from verl_mem1.training.forward import packed_logprobs_and_entropy
from verl_mem1.training.layout import PackedSample, pack_batch, pack_episode
from verl_mem1.training.run import make_tracking, pick_device
from verl_mem1.training.streaming import streamed_logprobs_and_entropy
from verl_mem1.training.updates import make_optimizer, make_scheduler
from verl_mem1.training.validation import as_list, cfg_get

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from verl_mem1.records import EpisodeRecord


def load_episodes(paths: Any, *, min_reward: float | None = None) -> list[EpisodeRecord]:
    """Episode records from JSONL files (``mem1 rollout``/``eval``/``trajectories``), keeping those that generated
    something and, with ``min_reward``, scored at least that (rejection sampling from a teacher)."""
    from verl_mem1.rollout.runner import read_episodes

    records = []
    for path in as_list(paths):
        path = Path(str(path)).expanduser()
        if not path.is_file():
            raise ConfigError(f"episode file not found: {path}")
        records.extend(read_episodes(path))
    kept = [r for r in records if any(t.generated_ids for t in r.turns)]
    if min_reward is not None:
        kept = [r for r in kept if r.reward is not None and r.reward >= min_reward]
    return kept


def split_episodes(
    records: list[EpisodeRecord], val_fraction: float, seed: int
) -> tuple[list[EpisodeRecord], list[EpisodeRecord]]:
    """A seeded train/validation split: ``round(val_fraction × n)`` episodes (at least one when the fraction is
    positive and two or more episodes exist) go to validation."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"data.val_fraction={val_fraction!r}: must be in [0, 1)")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = round(val_fraction * len(records))
    if val_fraction > 0 and len(records) > 1:
        n_val = min(max(n_val, 1), len(records) - 1)
    val = {order[i] for i in range(n_val)}
    return [r for i, r in enumerate(records) if i not in val], [r for i, r in enumerate(records) if i in val]


def sft_nll(
    model: torch.nn.Module,
    sample: PackedSample,
    *,
    backend: str,
    scale: float = 1.0,
    group_tokens: int | None = None,
) -> tuple[float, int]:
    """Back-propagate ``scale × Σ −log p(generated token)`` of a packed sample (T = 1); return the unscaled sum
    and the number of generated tokens. With ``group_tokens``, group by group (``streaming.py``): the same
    gradient, memory bounded by a group. Under ``torch.no_grad`` nothing is back-propagated."""
    if group_tokens and torch.is_grad_enabled():

        def group_loss(lp: torch.Tensor, _ent: Any, _index: torch.Tensor) -> torch.Tensor:
            return -lp.sum() * scale

        lp, _ = streamed_logprobs_and_entropy(
            model, sample, group_loss, group_tokens=group_tokens, backend=backend, temperature=1.0, with_entropy=False
        )
        return float(-lp.sum()), lp.numel()
    lp, _ = packed_logprobs_and_entropy(
        model, sample, backend=backend, temperature=1.0, with_entropy=False, compile_flex=False
    )
    nll = -lp.sum()
    if torch.is_grad_enabled():
        (nll * scale).backward()
    return float(nll.detach()), lp.numel()


class SFTTrainer:
    """Packed-layout SFT, one process (CPU or one GPU). ``fit()`` runs to ``trainer.total_training_steps``."""

    def __init__(self, cfg: DictConfig, *, progress: bool = True) -> None:
        self.cfg, self.progress = cfg, progress
        self.mem1 = Mem1Config.from_trainer_config(cfg)
        self.root = Path(str(cfg.trainer.default_local_dir)).expanduser()
        self.seed = int(cfg.trainer.seed)
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)
        self.device = pick_device(cfg)
        self.backend = attention_backend(self.mem1.attention, self.device.type)
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self._tracking = None

        data = cfg.data
        min_reward = cfg_get(cfg, "data.min_reward")
        episodes = load_episodes(data.train_files, min_reward=min_reward)
        if cfg_get(cfg, "data.val_files"):
            self.train_episodes, self.val_episodes = episodes, load_episodes(data.val_files, min_reward=min_reward)
        else:
            self.train_episodes, self.val_episodes = split_episodes(
                episodes, float(cfg_get(cfg, "data.val_fraction", 0.0)), self.seed
            )
        batch = int(data.train_batch_size)
        if len(self.train_episodes) < batch:
            raise ConfigError(f"data.train_batch_size={batch}: only {len(self.train_episodes)} training episodes")
        self.micro = int(cfg_get(cfg, "data.micro_batch_size_per_gpu") or batch)
        self.sampler = BatchSampler(self.train_episodes, batch, shuffle=True, seed=self.seed)
        steps = cfg_get(cfg, "trainer.total_training_steps")
        per_epoch = max(1, len(self.train_episodes) // batch)
        self.total_steps = int(steps) if steps else per_epoch * int(cfg.trainer.total_epochs)

        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = latest_checkpoint(self.root) if str(cfg.trainer.resume_mode) == "auto" else None
        if str(cfg.trainer.resume_mode) == "resume_path":
            start = Path(str(cfg.trainer.resume_from_path)).expanduser()
        path = str(start / "actor") if start else str(cfg.model.path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(cfg_get(cfg, "model.tokenizer_path") or cfg.model.path))
        dtype = getattr(torch, self.mem1.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device)
        if bool(cfg_get(cfg, "model.enable_gradient_checkpointing", False)):
            self.model.gradient_checkpointing_enable()
        self.optimizer = make_optimizer(self.model, cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, cfg.optim, self.total_steps)
        if start is not None:
            state = read_state(start)
            self.global_step = int(state["global_step"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.sampler.load_state_dict(state["data"])
            set_rng_state(state["rng"], {})
            print(f"resumed from {start} at step {self.global_step}")

    def _micro_batches(self, episodes: list[EpisodeRecord]) -> list[PackedSample]:
        return [
            pack_batch([pack_episode(r) for r in episodes[k : k + self.micro]])
            for k in range(0, len(episodes), self.micro)
        ]

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``data.train_batch_size`` episodes (gradient accumulated over micro-batches)."""
        start = time.perf_counter()
        self.model.train()
        samples = self._micro_batches(self.sampler.next_batch())
        total = sum(s.num_generated for s in samples)
        nll = 0.0
        for sample in samples:  # the loss is the token mean over the whole step
            nll += sft_nll(
                self.model,
                sample,
                backend=self.backend,
                scale=1.0 / total,
                group_tokens=self.mem1.segment_group_tokens,
            )[0]
        clip = cfg_get(self.cfg, "optim.clip_grad", 1.0)
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip) if clip else float("inf")))
        if math.isfinite(norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = float(self.scheduler.get_last_lr()[0])
        self.scheduler.step()
        return {
            "train/loss": nll / total,
            "train/tokens": float(total),
            "train/grad_norm": norm,
            "train/lr": lr,
            "timing_s/step": time.perf_counter() - start,
        }

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Token-mean negative log-likelihood of the validation episodes' generated tokens."""
        if not self.val_episodes:
            return {}
        self.model.eval()
        nll, tokens = 0.0, 0
        for sample in self._micro_batches(self.val_episodes):
            value, count = sft_nll(self.model, sample, backend=self.backend)
            nll, tokens = nll + value, tokens + count
        return {"val/loss": nll / tokens, "val/tokens": float(tokens)}

    def save_checkpoint(self) -> Path:
        from omegaconf import OmegaConf

        state = {
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data": self.sampler.state_dict(),
            "rng": rng_state({}),
        }
        return write_checkpoint(
            self.root,
            self.global_step,
            policy=self.model,
            tokenizer=self.tokenizer,
            state=state,
            config_yaml=OmegaConf.to_yaml(self.cfg, resolve=True),
            keep=cfg_get(self.cfg, "trainer.max_ckpt_to_keep"),
        )

    def fit(self) -> list[dict[str, float]]:
        """Train from ``global_step`` to ``total_steps``; validate every ``trainer.test_freq`` steps and at the end,
        checkpoint every ``trainer.save_freq`` steps and at the end. Returns every step's metrics."""
        from tqdm.auto import tqdm

        self._tracking = make_tracking(self.cfg)
        save_freq, test_freq = int(self.cfg.trainer.save_freq), int(self.cfg.trainer.test_freq)
        if self.global_step == 0 and self.val_episodes:
            self._tracking.log(self.validate(), step=0)
        bar = tqdm(total=self.total_steps, initial=self.global_step, desc="sft", unit="step", disable=not self.progress)
        with contextlib.closing(bar):
            while self.global_step < self.total_steps:
                metrics = self.train_step()
                self.global_step += 1
                last = self.global_step == self.total_steps
                if (test_freq > 0 and self.global_step % test_freq == 0) or last:
                    metrics.update(self.validate())
                if (save_freq > 0 and self.global_step % save_freq == 0) or last:
                    self.save_checkpoint()
                self.history.append(metrics)
                self._tracking.log(data=metrics, step=self.global_step)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}")
        return self.history

    def close(self) -> None:
        if self._tracking is not None:
            with contextlib.suppress(Exception):
                self._tracking.finish()
            self._tracking = None
