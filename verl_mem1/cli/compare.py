"""``mem1 compare BEFORE AFTER``: two ``mem1 eval`` folders of the same tasks, compared task by task.

The work is :func:`verl_mem1.evaluation.curve.compare_evaluations`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_compare_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 compare`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "compare",
        help="two evaluations of the same tasks: paired change ± standard error, tasks gained and lost",
        description="Compare two `mem1 eval` output folders that played the same tasks (e.g. the SFT and the RL "
        "checkpoint): for EM and F1, both means, the mean per-task change with its standard error (the yardstick "
        "for 'better': a change under 2 SE is noise), and the tasks each one gained and lost.",
    )
    parser.add_argument("before", help="the baseline's `mem1 eval` folder")
    parser.add_argument("after", help="the compared model's `mem1 eval` folder")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    parser.set_defaults(func=_cmd_compare)
    return parser


def _cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from verl_mem1.evaluation.curve import compare_evaluations

    try:
        table = compare_evaluations(args.before, args.after)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"mem1 compare: error: {exc}", file=sys.stderr)
        return 2
    print(f"before: {args.before}\nafter:  {args.after}\n\n{table}")
    if args.out:
        Path(args.out).write_text(f"before: `{args.before}`, after: `{args.after}`\n\n{table}\n", encoding="utf-8")
    return 0
