"""``mem1 train``: the single-machine trainer on a Hydra recipe composed over verl's ``ppo_trainer`` config.

An ``@hydra.main`` entry point, as verl's ``main_ppo``: the recipes ship inside the package (``verl_mem1.recipes``,
the repository's ``recipes/`` folder) and are found on Hydra's search path as ``pkg://verl_mem1.recipes``, so a
wheel install needs no source tree. Overrides and flags are Hydra's: ``mem1 train trainer.total_training_steps=2
actor_rollout_ref.rollout.n=2``, ``--config-name qa`` for another recipe, ``--config-dir DIR`` to add your own
recipes, ``--cfg job`` to print the composed config. Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

from verl_mem1.recipes import RECIPES, recipe_names

DEFAULT_RECIPE = "tiny"

COMMON_OVERRIDES = """\
common overrides (key=value, as in verl):
  trainer.total_training_steps=N      steps to train (trainer.total_epochs when null)
  data.train_batch_size=N             tasks per step
  actor_rollout_ref.rollout.n=N       episodes per task (the GRPO group)
  actor_rollout_ref.rollout.response_length=N   max new tokens per turn
  actor_rollout_ref.rollout.temperature=T
  actor_rollout_ref.model.path=PATH   a local model, a hub name, or "tiny"
  actor_rollout_ref.actor.optim.lr=LR
  actor_rollout_ref.actor.ppo_epochs=N / ppo_mini_batch_size=N / clip_ratio=E / use_kl_loss=BOOL
  algorithm.adv_estimator=grpo|gae    GRPO, or PPO with a critic (GAE over generated tokens)
  algorithm.use_kl_in_reward=BOOL algorithm.kl_ctrl.kl_coef=B
  data.train_files=PATH               verl RL parquet or JSONL tasks (null: compose from mem1.train_source)
  trainer.save_freq=N trainer.default_local_dir=DIR trainer.resume_mode=auto|disable|resume_path
  trainer.logger=[console,tensorboard] trainer.project_name=NAME trainer.experiment_name=NAME
  mem1.context=mem1|full|window:K mem1.tags=paper|search_r1 mem1.max_turns=N mem1.objectives=N
  mem1.retriever_url=auto|http://HOST:PORT mem1.attention=flex|dense|segmented|flash
  mem1.reward_metric=em|f1 mem1.logprob_tolerance=1e-4|null
  (a recipe without some mem1 key gets the trainer's default; add it with +mem1.KEY=VALUE)
"""


def trainer_view(cfg: DictConfig) -> dict[str, Any]:
    """The resolved part of the config the single-machine trainer reads (what the start-up banner prints)."""
    from omegaconf import OmegaConf

    from verl_mem1.config import Mem1Config
    from verl_mem1.training.validation import cfg_get

    keys = [
        "data.train_files",
        "data.val_files",
        "data.train_batch_size",
        "data.shuffle",
        "actor_rollout_ref.model.path",
        "actor_rollout_ref.rollout.n",
        "actor_rollout_ref.rollout.temperature",
        "actor_rollout_ref.rollout.top_p",
        "actor_rollout_ref.rollout.top_k",
        "actor_rollout_ref.rollout.response_length",
        "actor_rollout_ref.actor.optim",
        "actor_rollout_ref.actor.ppo_epochs",
        "actor_rollout_ref.actor.ppo_mini_batch_size",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
        "actor_rollout_ref.actor.use_dynamic_bsz",
        "actor_rollout_ref.actor.clip_ratio",
        "actor_rollout_ref.actor.clip_ratio_low",
        "actor_rollout_ref.actor.clip_ratio_high",
        "actor_rollout_ref.actor.clip_ratio_c",
        "actor_rollout_ref.actor.loss_agg_mode",
        "actor_rollout_ref.actor.policy_loss.loss_mode",
        "actor_rollout_ref.actor.entropy_coeff",
        "actor_rollout_ref.actor.use_kl_loss",
        "actor_rollout_ref.actor.kl_loss_coef",
        "actor_rollout_ref.actor.kl_loss_type",
        "algorithm.adv_estimator",
        "algorithm.gamma",
        "algorithm.lam",
        "algorithm.norm_adv_by_std_in_grpo",
        "algorithm.use_kl_in_reward",
        "algorithm.kl_penalty",
        "algorithm.kl_ctrl",
        "trainer",
    ]
    if cfg_get(cfg, "algorithm.adv_estimator") == "gae":
        keys[-1:-1] = ["critic.model.path", "critic.optim", "critic.cliprange_value", "critic.ppo_epochs"]
    view: dict[str, Any] = {}
    for key in keys:
        value = cfg_get(cfg, key)
        if hasattr(value, "_metadata"):
            value = OmegaConf.to_container(value, resolve=True)
        if key == "trainer":
            value = {k: value[k] for k in _TRAINER_KEYS if k in value}
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if not str(k).startswith("_")}
        node = view
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    view["mem1"] = Mem1Config.from_trainer_config(cfg).to_dict()  # with the defaults the recipe left out
    return view


_TRAINER_KEYS = (
    "device",
    "total_training_steps",
    "total_epochs",
    "save_freq",
    "test_freq",
    "val_before_train",
    "critic_warmup",
    "logger",
    "project_name",
    "experiment_name",
    "default_local_dir",
    "resume_mode",
    "resume_from_path",
    "max_actor_ckpt_to_keep",
)


def run(cfg: DictConfig, *, progress: bool = True) -> list[dict[str, float]]:
    """Validate, print the resolved settings, train; returns the per-step metrics."""
    import yaml

    from verl_mem1.training.trainer import Mem1Trainer
    from verl_mem1.training.validation import validate_config

    validate_config(cfg)  # before anything is loaded or built
    print("resolved training config (the keys the single-machine trainer reads):")
    print(yaml.safe_dump(trainer_view(cfg), sort_keys=False, default_flow_style=None, width=120).rstrip())
    with Mem1Trainer(cfg, progress=progress) as trainer:
        history = trainer.fit()
        print(f"done: step {trainer.global_step} of {trainer.total_steps}; checkpoints in {trainer.root}")
    return history


def run_hydra(prog: str, config_name: str, hydra_args: Sequence[str], task: Callable[[DictConfig], Any]) -> int:
    """Run ``task(cfg)`` as an ``@hydra.main`` app over the shipped recipes with ``hydra_args`` as its command
    line; a ``ConfigError`` (or a missing file) is printed as ``PROG: error: ...`` and exits 2, at start-up."""
    import hydra

    @hydra.main(config_path=RECIPES, config_name=config_name, version_base=None)
    def app(cfg: DictConfig) -> None:
        import logging

        from verl_mem1.config import ConfigError

        # Hydra's console logging is at INFO: keep httpx's line per environment request out of it
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            task(cfg)
        except (ConfigError, FileNotFoundError) as exc:  # a bad value: fail at start-up, naming the key
            print(f"{prog}: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    argv = sys.argv
    sys.argv = [prog, *hydra_args]
    try:
        app()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = argv
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    return run_hydra("mem1 train", DEFAULT_RECIPE, args.hydra_args, lambda cfg: run(cfg, progress=not args.no_progress))


_DESCRIPTION = (
    "Train a MEM1 agent with the single-machine trainer (CPU or one GPU): rollouts with the policy itself, "
    "exact packed log-probs, GRPO or PPO+GAE from verl's core_algos, checkpoints and resume. The recipe is a Hydra "
    "config composed over verl's ppo_trainer, so verl's keys and override syntax apply; every argument but "
    "--no-progress goes to Hydra (--config-name NAME, --config-dir DIR, --cfg job, key=value, +key=value, ~key)."
)


def add_train_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 train``; arguments it does not know are Hydra's (``accepts_unknown``)."""
    parser = subparsers.add_parser(
        "train",
        help="train a MEM1 agent (single machine; Hydra recipe over verl's ppo_trainer)",
        description=_DESCRIPTION,
        epilog=COMMON_OVERRIDES + f"\nshipped recipes (--config-name): {', '.join(recipe_names())}\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd_train, accepts_unknown="hydra_args")
    return parser
