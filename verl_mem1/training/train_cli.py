"""``mem1 train``: compose a Hydra recipe over verl's ``ppo_trainer`` config and run the single-machine trainer.

Overrides are Hydra's, as with verl's ``main_ppo``: ``mem1 train trainer.total_training_steps=2
actor_rollout_ref.rollout.n=2`` (``+key=value`` adds a key, ``~key`` deletes one). ``python -m
verl_mem1.training.train_cli`` takes the same arguments. Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

DEFAULT_RECIPE = "tiny"
RECIPES_ENV = "MEM1_RECIPES"

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


def default_config_dir() -> Path:
    """``$MEM1_RECIPES``, else the ``recipes/`` directory of the source tree this package runs from."""
    env = os.environ.get(RECIPES_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (Path(__file__).resolve().parents[2] / "recipes").resolve()


def available_recipes(config_dir: Path) -> list[str]:
    """Primary configs in ``config_dir`` (YAML files with a ``defaults:`` list; not e.g. agent-loop lists)."""
    if not config_dir.is_dir():
        return []
    found = []
    for path in sorted(config_dir.glob("*.yaml")):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        if any(line.startswith("defaults:") for line in text.splitlines()):
            found.append(path.stem)
    return found


def _resolve_recipe(recipe: str, config_dir: str | Path | None) -> tuple[Path, str]:
    """``--recipe NAME`` in the config dir, or ``--recipe path/to/recipe.yaml``."""
    as_path = Path(recipe).expanduser()
    if config_dir is None and as_path.suffix in (".yaml", ".yml") and as_path.is_file():
        return as_path.resolve().parent, as_path.stem
    directory = Path(config_dir).expanduser().resolve() if config_dir is not None else default_config_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"recipe directory not found: {directory} (give --config-dir DIR or ${RECIPES_ENV})")
    name = as_path.stem if as_path.suffix in (".yaml", ".yml") else recipe
    if not (directory / f"{name}.yaml").is_file():
        known = ", ".join(available_recipes(directory)) or "none"
        raise FileNotFoundError(f"recipe {name!r} not found in {directory} (recipes there: {known})")
    return directory, name


def compose_config(
    recipe: str = DEFAULT_RECIPE, overrides: Sequence[str] = (), config_dir: str | Path | None = None
) -> DictConfig:
    """Compose ``recipe`` (over verl's ``ppo_trainer`` through its ``hydra.searchpath``) with ``overrides``.

    Works inside a running Hydra app too: an initialised global Hydra is set aside and restored afterwards.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    directory, name = _resolve_recipe(recipe, config_dir)

    def run() -> DictConfig:
        with initialize_config_dir(config_dir=str(directory), version_base=None):
            return compose(config_name=name, overrides=list(overrides))

    if not GlobalHydra.instance().is_initialized():
        return run()
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        return run()
    finally:
        restore_gh_from_backup(backup)


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


def _cmd_train(args: argparse.Namespace) -> int:
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from verl_mem1.config import ConfigError

    try:
        cfg = compose_config(args.recipe, args.overrides, args.config_dir)
        if args.cfg:
            print(OmegaConf.to_yaml(cfg, resolve=True))
            return 0
        run(cfg, progress=not args.no_progress)
    except (ConfigError, HydraException, OmegaConfBaseException, FileNotFoundError) as exc:
        print(f"mem1 train: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    directory = default_config_dir()
    recipes = ", ".join(available_recipes(directory)) or "none found"
    parser.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        help=f"recipe name in the config dir, or a path to a recipe .yaml (default {DEFAULT_RECIPE}; "
        f"available: {recipes})",
    )
    parser.add_argument(
        "--config-dir",
        default=None,
        metavar="DIR",
        help=f"Hydra config directory holding the recipes (default ${RECIPES_ENV} or {directory})",
    )
    parser.add_argument("--cfg", action="store_true", help="print the composed, resolved config and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides of the recipe")
    parser.set_defaults(func=_cmd_train)
    return parser


_DESCRIPTION = (
    "Train a MEM1 agent with the single-machine trainer (CPU or one GPU): rollouts with the policy itself, "
    "exact packed log-probs, GRPO or PPO+GAE from verl's core_algos, checkpoints and resume. The recipe is a Hydra "
    "config composed over verl's ppo_trainer, so verl's keys and override syntax apply."
)


def add_train_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 train`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "train",
        help="train a MEM1 agent (single machine; Hydra recipe over verl's ppo_trainer)",
        description=_DESCRIPTION,
        epilog=COMMON_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return _configure(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m verl_mem1.training.train_cli",
        description=_DESCRIPTION,
        epilog=COMMON_OVERRIDES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return _configure(parser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
