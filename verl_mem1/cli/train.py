"""``mem1 train``: verl's own trainer (``main_ppo``) on this machine, on a Hydra recipe composed over verl's
``ppo_trainer`` config (``verl_mem1.train.train_on_this_machine``).

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

DEFAULT_RECIPE = "qa"
# with no --config-name and no experiment of its own, `mem1 train` is `--config-name qa +experiment=tiny`
DEFAULT_EXPERIMENT = "+experiment=tiny"

COMMON_OVERRIDES = """\
common overrides (key=value, as in verl):
  trainer.total_training_steps=N      steps to train
  data.train_batch_size=N             tasks per step
  actor_rollout_ref.rollout.n=N       episodes per task (the GRPO group)
  actor_rollout_ref.model.path=PATH   a local model, a hub name, or "tiny" (a random tiny Qwen2, written for the run)
  actor_rollout_ref.actor.optim.lr=LR
  actor_rollout_ref.actor.use_kl_loss=BOOL actor_rollout_ref.actor.kl_loss_coef=B
  algorithm.adv_estimator=grpo|gae    GRPO, or PPO with a critic
  data.train_files=PATH data.val_files=PATH   verl RL parquet (null: written under the run folder from
                                      single_machine.* : bundled HotpotQA questions, or the bundled shop's goals)
  trainer.save_freq=N trainer.test_freq=N trainer.default_local_dir=DIR trainer.resume_mode=auto|disable
  trainer.logger=[console,file]       file: DIR/metrics.jsonl, which `mem1 curve DIR` draws
  trainer.rollout_data_dir=DIR        every episode, token-exact, for `mem1 view DIR`
  mem1.env=retrieval|webshop mem1.context=mem1|full|window:K mem1.max_turns=N mem1.invalid_action_penalty=P
  mem1.retriever_url=auto|http://HOST:PORT mem1.webshop_url=auto|http://HOST:PORT   (auto: bundled, on loopback)
  single_machine.objectives=N         questions per composed task
"""


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
    import os

    import torch

    from verl_mem1.train import train_on_this_machine

    if not torch.cuda.is_available():  # verl picks its platform when its modules load, before the recipe is read
        os.environ.setdefault("VERL_PLATFORM", "cpu")
    return run_hydra("mem1 train", DEFAULT_RECIPE, with_default_experiment(args.hydra_args), train_on_this_machine)


def with_default_experiment(hydra_args: Sequence[str]) -> list[str]:
    """``hydra_args`` with :data:`DEFAULT_EXPERIMENT` first, unless they name a recipe or an experiment."""
    names_one = any(
        a in ("--config-name", "-cn") or a.startswith(("--config-name=", "-cn=", "+experiment=", "experiment="))
        for a in hydra_args
    )
    return list(hydra_args) if names_one else [DEFAULT_EXPERIMENT, *hydra_args]


_DESCRIPTION = (
    "Train a MEM1 agent with verl's own trainer (main_ppo, the MEM1 plug-in) on this machine: CPU (verl's CPU "
    "platform, set when no CUDA device is visible) or one GPU. The recipe is a Hydra config composed over verl's "
    "ppo_trainer, so verl's keys and override syntax apply; every argument goes to Hydra (--config-name NAME, "
    "--config-dir DIR, --cfg job, key=value, +key=value, ~key). Before verl starts, what the recipe leaves to this "
    "machine is prepared: model path 'tiny', null task files, 'auto' environment URLs. Clusters run the same "
    "recipes with `python -m verl_mem1.train` under `ray job submit`."
)


def add_train_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 train``; arguments it does not know are Hydra's (``accepts_unknown``)."""
    parser = subparsers.add_parser(
        "train",
        help="train a MEM1 agent with verl's trainer on this machine (Hydra recipe over verl's ppo_trainer)",
        description=_DESCRIPTION,
        epilog=COMMON_OVERRIDES
        + f"\nshipped recipes (--config-name): {', '.join(recipe_names())}; experiments (+experiment=NAME, added to "
        "a recipe): tiny (the default: the tiny model on CPU), smol_qa (SmolLM2 from its SFT checkpoint, make learn)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=_cmd_train, accepts_unknown="hydra_args")
    return parser
