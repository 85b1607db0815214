"""``mem1 demo``: a real small model learns the MEM1 format on one CPU (SFT on teacher episodes), evaluated.

The work is :func:`verl_mem1.demo.run_demo`; its module docstring is the command's description.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from verl_mem1 import demo


def add_demo_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 demo`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "demo",
        help="a real small model learns MEM1 on CPU: zero-shot vs fine-tuned, mem1 vs full context",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="outputs/demo", help="working directory (default outputs/demo)")
    parser.add_argument(
        "--model", default="smollm2", help="smollm2 (default), tiny (random weights, seconds) or a Hugging Face folder"
    )
    parser.add_argument(
        "--teacher-tasks",
        type=int,
        default=100,
        help="training tasks the oracle plays per objective count (1, 2 and 3; default 100)",
    )
    parser.add_argument("--sft-steps", type=int, default=12, help="fine-tuning steps of 4 episodes (default 12)")
    parser.add_argument("--sft-lr", type=float, default=1e-4, help="fine-tuning learning rate (default 1e-4)")
    parser.add_argument(
        "--objectives", type=int, nargs="+", default=list(demo.EVAL_OBJECTIVES), help="objective counts (1 2 4)"
    )
    parser.add_argument("--tasks-per-point", type=int, default=16, help="held-out tasks per objective count (16)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="tokens per turn at most (default 40 + 16 x objectives)"
    )
    parser.add_argument("--webshop-goals", default="", help="also play WebShop goals START:STOP (default: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_cmd_demo)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        demo.run_demo(
            args.out,
            model=args.model,
            teacher_tasks=args.teacher_tasks,
            sft_steps=args.sft_steps,
            sft_lr=args.sft_lr,
            objectives=args.objectives,
            tasks_per_point=args.tasks_per_point,
            max_new_tokens=args.max_new_tokens,
            webshop_goals=args.webshop_goals or None,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except (ValueError, RuntimeError) as exc:
        print(f"mem1 demo: error: {exc}", file=sys.stderr)
        return 2
    return 0
