"""``mem1 sft``: supervised fine-tuning on MEM1 episode records, on the packed layout RL trains on.

A Hydra entry point over the shipped ``sft`` recipe (composed over verl's ``sft_trainer_engine`` config), as
``mem1 train``: ``mem1 sft data.train_files=[episodes.jsonl] model.path=DIR trainer.total_training_steps=20``.
The trainer is verl's own (``verl.trainer.sft_trainer``) with the MEM1 engine
(``verl_mem1.training.verl_plugin.sft``), in a child process.
"""

from __future__ import annotations

import argparse
from typing import Any

_EPILOG = """\
common overrides (key=value, as in verl):
  data.train_files=[A.jsonl,B.jsonl]  episode records (mem1 rollout / eval / trajectories output)
  data.val_files=[C.jsonl] | data.val_fraction=0.1   validation episodes, or a seeded split
  data.min_reward=1.0                 keep episodes that scored at least this (rejection sampling)
  data.train_batch_size=N data.micro_batch_size_per_gpu=M   episodes per step / per forward (accumulation)
  model.path=DIR                      the model to fine-tune (e.g. from `mem1 model smollm2 --out DIR`)
  optim.lr=LR optim.lr_scheduler_type=constant|cosine optim.lr_warmup_steps_ratio=R
  trainer.total_training_steps=N | trainer.total_epochs=N   trainer.test_freq=N trainer.save_freq=N
  trainer.default_local_dir=DIR trainer.resume_mode=auto|disable|resume_path trainer.seed=N
  trainer.device=cpu|cuda mem1.attention=auto|segmented|dense|flex|flash
"""


def _cmd_sft(args: argparse.Namespace) -> int:
    from verl_mem1.cli.train import run_hydra
    from verl_mem1.training.verl_plugin.sft import RECIPE, train_sft

    return run_hydra("mem1 sft", RECIPE, args.hydra_args, lambda cfg: train_sft(cfg, progress=not args.no_progress))


def add_sft_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 sft``; arguments it does not know are Hydra's (``accepts_unknown``)."""
    parser = subparsers.add_parser(
        "sft",
        help="supervised fine-tuning on MEM1 episode records (same packed layout as RL; Hydra recipe)",
        description=(
            "Fine-tune a model on MEM1 episode records with the loss on generated tokens only, on the packed layout "
            "RL trains on. Every argument but --no-progress goes to Hydra (recipe: sft, over verl's "
            "sft_trainer_engine config)."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd_sft, accepts_unknown="hydra_args")
    return parser
