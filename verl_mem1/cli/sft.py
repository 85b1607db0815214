"""``mem1 sft``: supervised fine-tuning on MEM1 episode records, on the packed layout RL trains on.

A Hydra entry point over the shipped ``sft`` recipe (composed over verl's ``sft_trainer_engine`` config), as
``mem1 train``: ``mem1 sft data.train_files=[episodes.jsonl] model.path=DIR trainer.total_training_steps=20``.
The work is :class:`verl_mem1.training.sft.SFTTrainer`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

RECIPE = "sft"

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
  mem1.segment_group_tokens=N|null mem1.attention=auto|segmented|dense|flex|flash
"""


def run(cfg: DictConfig, *, progress: bool = True) -> list[dict[str, float]]:
    """Train; returns the per-step metrics."""
    from verl_mem1.training.sft import SFTTrainer

    trainer = SFTTrainer(cfg, progress=progress)
    try:
        print(
            f"SFT on {len(trainer.train_episodes)} training / {len(trainer.val_episodes)} validation episodes, "
            f"{trainer.total_steps} steps, from {cfg.model.path}"
        )
        history = trainer.fit()
        print(f"done: step {trainer.global_step} of {trainer.total_steps}; checkpoints in {trainer.root}")
        return history
    finally:
        trainer.close()


def _cmd_sft(args: argparse.Namespace) -> int:
    from verl_mem1.cli.train import run_hydra

    return run_hydra("mem1 sft", RECIPE, args.hydra_args, lambda cfg: run(cfg, progress=not args.no_progress))


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
