"""The single-machine MEM1 trainer (the embedded default: CPU, or one GPU), driven by a verl ``ppo_trainer`` config.

One step:

1. take ``data.train_batch_size`` tasks and play ``actor_rollout_ref.rollout.n`` episodes of each with the MEM1
   episode loop, the policy itself generating (``HFLocalBackend`` on the same weights, eval mode, no grad);
2. pack every episode (``batch.build_batch``); the old log-probs *are* the rollout's recorded log-probs — the
   packed forward reproduces them exactly, which the update checks on every token it scores before its first
   optimizer step (metric ``actor/rollout_logprob_diff``; above ``mem1.logprob_tolerance`` the run stops);
3. rewards (EM or F1 of the final answer), optional reference-model KL (in the reward or as a loss), critic values
   when the estimator is GAE, advantages with verl's ``core_algos`` (``batch.compute_batch_advantages``);
4. ``ppo_epochs`` × mini-batches of the clipped PPO update, then the critic's (``updates.py``);
5. metrics to verl's ``Tracking`` (console by default), a checkpoint every ``trainer.save_freq`` steps
   (``checkpoint.py``: verl's layout, resumable with ``trainer.resume_mode=auto``).

This module only orchestrates: config checks live in ``validation.py`` and ``verl_mem1.config``, the episode settings
and environment clients in ``rollout.configure``, the bundled servers in ``env_servers.bundled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from verl_mem1.config import AUTO, ConfigError
from verl_mem1.evaluation.curve import read_learning_curve
from verl_mem1.rollout.configure import episode_config, make_environment
from verl_mem1.training import algorithms as algos
from verl_mem1.training.batch import build_batch, compute_batch_advantages, env_error_count
from verl_mem1.training.checkpoint import latest_checkpoint, read_state, rng_state, set_rng_state, write_checkpoint
from verl_mem1.training.data import BatchSampler, load_split
from verl_mem1.training.head import PLAIN_HEAD_MODEL_TYPES, plain_head
from verl_mem1.training.layout import packed_token_count, per_turn_token_count
from verl_mem1.training.run import make_tracking, pick_device
from verl_mem1.training.streaming import critic_parts
from verl_mem1.training.updates import (
    PPOSettings,
    batch_logprobs,
    batch_values,
    make_optimizer,
    make_scheduler,
    update_critic,
    update_policy,
)
from verl_mem1.training.validation import cfg_get as _get
from verl_mem1.training.validation import present_metrics, validate_config

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from verl_mem1.records import EpisodeRecord, Task
    from verl_mem1.rollout.episode import EpisodeConfig

logger = logging.getLogger(__name__)


class Mem1Trainer:
    """Rollout → pack → advantages → PPO, one process. ``fit()`` runs to ``trainer.total_training_steps``."""

    def __init__(self, cfg: DictConfig, *, progress: bool = True) -> None:
        self.mem1 = validate_config(cfg)
        self.cfg = cfg
        self.progress = progress
        self.device = pick_device(cfg)
        self.settings = PPOSettings.from_config(cfg, self.mem1)
        self.estimator = str(cfg.algorithm.adv_estimator)
        self.use_critic = self.estimator == algos.GAE
        self.use_kl_in_reward = bool(cfg.algorithm.use_kl_in_reward)
        self.use_ref = self.use_kl_in_reward or self.settings.use_kl_loss
        self.root = Path(str(cfg.trainer.default_local_dir)).expanduser()
        self.seed = self.mem1.seed
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self._stack = contextlib.ExitStack()
        self.dtype = getattr(torch, self.mem1.dtype)
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)

        self._tracking = None
        self._shuffle_gen = torch.Generator().manual_seed(self.settings.seed)
        try:
            self.url = self._start_environment()
            self.train_tasks = load_split(cfg, self.mem1, "train", root=self.root, url=self.url)
            validating = int(cfg.trainer.test_freq) > 0 or bool(cfg.trainer.val_before_train)
            self.val_tasks = load_split(cfg, self.mem1, "val", root=self.root, url=self.url) if validating else []
            data_seed = _get(cfg, "data.seed")
            self.sampler = BatchSampler(
                self.train_tasks,
                int(cfg.data.train_batch_size),
                shuffle=bool(_get(cfg, "data.shuffle", True)),
                seed=self.seed if data_seed is None else int(data_seed),
            )
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
        if self.mem1.segment_group_tokens is not None and plain_head(self.policy) is None:
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
            if self.mem1.segment_group_tokens is not None:
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
            max_batch_size=self.mem1.generate_batch_size,
            seed=self.seed,
        )

    @property
    def env(self) -> str:
        return self.mem1.env

    def _start_environment(self) -> str:
        """The environment server's URL; ``auto`` serves the bundled one (HotpotQA BM25 or WebShop) on loopback."""
        if self.mem1.url() != AUTO:
            return self.mem1.url()
        from env_servers.bundled import serve_bundled

        return serve_bundled(self.env, self._stack, self.root / "retriever")

    def _resume(self) -> None:
        start = self._resume_from
        if start is None:
            return
        state = read_state(start)
        self.global_step = int(state["global_step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.critic is not None and "critic_optimizer" in state:
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
            self.critic_scheduler.load_state_dict(state["critic_scheduler"])
        if self.kl_ctrl is not None and "kl_coef" in state:
            self.kl_ctrl.value = state["kl_coef"]
        self.sampler.load_state_dict(state["data"])
        set_rng_state(state["rng"], self._generators())
        # the learning curve continues where the checkpoint left it
        self.history = [r for r in read_learning_curve(self.root) if r["training/global_step"] <= self.global_step]
        print(f"resumed from {start} at step {self.global_step}")

    def _generators(self) -> dict[str, torch.Generator]:
        return {"rollout": self.backend.generator, "shuffle": self._shuffle_gen}

    # ------------------------------------------------------------------------------------------- data

    def next_tasks(self) -> list[Task]:
        """The next ``data.train_batch_size`` tasks (``data.BatchSampler``: reshuffled each epoch, resumable)."""
        return self.sampler.next_batch()

    # ---------------------------------------------------------------------------------------- rollout

    def episode_config(self, task: Task | None = None, *, validation: bool = False) -> EpisodeConfig:
        """The rollout's settings for ``task``; validation samples with ``rollout.val_kwargs`` (greedy by default)."""
        rollout = self.cfg.actor_rollout_ref.rollout
        temperature, top_p, top_k = float(rollout.temperature), float(rollout.top_p), int(rollout.top_k)
        if validation:
            temperature = float(_get(self.cfg, "actor_rollout_ref.rollout.val_kwargs.temperature", 0.0) or 0.0)
            if not bool(_get(self.cfg, "actor_rollout_ref.rollout.val_kwargs.do_sample", False)):
                temperature = 0.0
            top_p, top_k = 1.0, -1
        return episode_config(
            self.mem1,
            task=task,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_new_tokens=int(rollout.response_length),
        )

    def reward(self, answer: str | None, ground_truth: list[list[str]]) -> float:
        from verl_mem1.tasks.rewards import answer_reward

        return answer_reward(self.mem1.reward_metric, self.mem1.reward_reduce)(answer, ground_truth)

    def rollout(self, tasks: Sequence[Task], *, validation: bool = False) -> list[EpisodeRecord]:
        """Play the tasks with the current policy (eval mode, no grad); records come back in task order."""
        from verl_mem1.rollout.runner import run_episodes

        env = make_environment(self.mem1, self.url)
        self.policy.eval()

        async def go():
            try:
                return await run_episodes(
                    tasks,
                    self.backend,
                    env,
                    self.tokenizer,
                    functools.partial(self.episode_config, validation=validation),
                    concurrency=self.mem1.concurrency,
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
        metrics: dict[str, float] = {"mem1/env_errors": float(env_error_count(records, self.mem1.max_env_error_rate))}
        batch = build_batch(records, scores, group_ids)

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

        summary = summarize([episode_metrics(r, reduce=self.mem1.reward_reduce) for r in records])
        packed = [packed_token_count(r) for r in batch.records]
        per_turn = [per_turn_token_count(r) for r in batch.records]
        generated = sum(batch.lengths)
        step_s = time.perf_counter() - t_step
        metrics.update(
            {
                "reward/mean": float(np.mean(batch.scores)),  # the episodes trained on
                "reward/max": float(np.max(batch.scores)),
                "reward/min": float(np.min(batch.scores)),
                **present_metrics({"reward/em": summary["em"], "reward/f1": summary["f1"]}),
                **present_metrics({"reward/success_rate": summary["success_rate"]}),
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
        """Greedy (``rollout.val_kwargs``) episodes on the validation tasks: accuracy, its standard error, efficiency.

        Each task's scores go to ``validation/step_N.jsonl`` under the run folder, so two evaluations of the same
        tasks can be compared task by task (``verl_mem1.evaluation.curve.paired_difference``).
        """
        from verl_mem1.evaluation.curve import standard_error
        from verl_mem1.evaluation.metrics import episode_metrics, summarize
        from verl_mem1.jsonl import write_jsonl

        if not self.val_tasks:
            return {}
        t0 = time.perf_counter()
        records = self.rollout(self.val_tasks, validation=True)
        rows = [episode_metrics(r, reduce=self.mem1.reward_reduce) for r in records]
        summary = summarize(rows)
        write_jsonl(
            self.root / "validation" / f"step_{self.global_step}.jsonl",
            [
                {"id": r.id, "reward": r.reward, "em": row.get("em"), "f1": row.get("f1"), "answer": r.final_answer}
                for r, row in zip(records, rows, strict=True)
            ],
        )

        def se(key: str) -> float | None:
            values = [float(row[key]) for row in rows if row.get(key) is not None]
            return standard_error(values) if values else None

        return {
            "val/reward": float(np.mean([r.reward or 0.0 for r in records])),
            **present_metrics(
                {
                    "val/em": summary["em"],
                    "val/em_se": se("em"),
                    "val/f1": summary["f1"],
                    "val/f1_se": se("f1"),
                    "val/success_rate": summary["success_rate"],
                }
            ),
            "val/invalid_action_rate": summary["invalid_action_rate"],
            "val/peak_tokens": summary["peak_tokens"],
            "val/turns": summary["turns"],
            "val/episodes": float(len(records)),
            "timing_s/validation": time.perf_counter() - t0,
        }

    # ------------------------------------------------------------------------------------- checkpoint

    def save_checkpoint(self) -> Path:
        """Write ``global_step_N/`` and point verl's tracker file at it; prune beyond ``max_actor_ckpt_to_keep``."""
        from omegaconf import OmegaConf

        state: dict[str, Any] = {
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data": self.sampler.state_dict(),
            "rng": rng_state(self._generators()),
        }
        if self.critic is not None:
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
            state["critic_scheduler"] = self.critic_scheduler.state_dict()
        if self.kl_ctrl is not None:
            state["kl_coef"] = float(self.kl_ctrl.value)
        return write_checkpoint(
            self.root,
            self.global_step,
            policy=self.policy,
            tokenizer=self.tokenizer,
            critic=self.critic,
            state=state,
            config_yaml=OmegaConf.to_yaml(self.cfg, resolve=True),
            keep=_get(self.cfg, "trainer.max_actor_ckpt_to_keep"),
        )

    # -------------------------------------------------------------------------------------------- fit

    def tracking(self):
        if self._tracking is None:
            self._tracking = make_tracking(self.cfg)
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
            metrics = {**self.validate(), "training/global_step": 0.0}
            self.history.append(metrics)
            tracking.log(data=metrics, step=0)
            self._write_curve()
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
                self._write_curve()
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics.get('actor/ppo_kl', 0.0):.2e}")
        finally:
            bar.close()
        return self.history

    def _write_curve(self) -> None:
        from verl_mem1.evaluation.curve import write_learning_curve

        title = f"{self.cfg.trainer.experiment_name}: {self.estimator} from {self.model_path}"
        write_learning_curve(self.history, self.root, title=title)

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
