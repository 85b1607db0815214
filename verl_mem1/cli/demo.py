"""``mem1 demo``: the whole pipeline on one CPU with the tiny model and the bundled data.

The work is :func:`verl_mem1.demo.run_demo`; its module docstring is the command's description.
"""

from __future__ import annotations

import argparse
from typing import Any

from verl_mem1 import demo


def add_demo_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 demo`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on CPU with the tiny model and bundled data",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="outputs/demo", help="working directory (default outputs/demo)")
    parser.add_argument("--questions", type=int, default=4, help="single questions per policy in part 1 (default 4)")
    parser.add_argument("--max-turns", type=int, default=6, help="turns per episode in part 1 (default 6)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="tokens per turn in part 1 (default 48)")
    parser.add_argument(
        "--objectives", type=int, nargs="*", default=list(demo.SWEEP_OBJECTIVES), help="objective counts for part 2"
    )
    parser.add_argument("--tasks-per-point", type=int, default=2, help="composite tasks per objective count")
    parser.add_argument(
        "--webshop-goals", default="0:4", help="WebShop goals START:STOP for part 3 ('' skips it; default 0:4)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_cmd_demo)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    demo.run_demo(
        args.out,
        num_questions=args.questions,
        max_turns=args.max_turns,
        max_new_tokens=args.max_new_tokens,
        objectives=args.objectives,
        tasks_per_point=args.tasks_per_point,
        webshop_goals=args.webshop_goals,
        seed=args.seed,
    )
    return 0
