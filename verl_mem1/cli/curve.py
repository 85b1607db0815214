"""``mem1 curve``: a training run's learning curve (CSV, JSON, PNG) and its held-out scores, compared task by task.

The work is :mod:`verl_mem1.evaluation.curve`; ``mem1 train`` writes the same files after every step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_curve_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 curve`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "curve",
        help="a training run's learning curve and held-out scores (paired against the first evaluation)",
        description="Redraw learning_curve.{csv,png} of a `mem1 train` run folder (trainer.default_local_dir), or "
        "draw it from the metrics.jsonl of a verl trainer run (trainer.logger=[console,file] with "
        "VERL_FILE_LOGGER_PATH=RUN_DIR/metrics.jsonl, as `make learn` runs it), and print its held-out EM/F1 at "
        "every evaluation with standard errors, and each evaluation's change against the first, paired task by task "
        "(the same held-out tasks every time).",
    )
    parser.add_argument("run_dir", help="the run folder (trainer.default_local_dir)")
    parser.set_defaults(func=_cmd_curve)
    return parser


def _cmd_curve(args: argparse.Namespace) -> int:
    from verl_mem1.evaluation.curve import read_learning_curve, read_verl_metrics, summarize_run, write_learning_curve

    run_dir = Path(args.run_dir)
    try:  # a verl run's log first: learning_curve.json is then what an earlier `mem1 curve` drew from it
        rows, title = read_verl_metrics(run_dir), f"verl trainer: {run_dir.name}"
    except ValueError as exc:
        print(f"mem1 curve: error: {exc}", file=sys.stderr)
        return 2
    if not rows and (rows := read_learning_curve(run_dir)):
        title = json.loads((run_dir / "learning_curve.json").read_text(encoding="utf-8")).get("title", "")
    if not rows:
        print(f"mem1 curve: error: {run_dir} has neither learning_curve.json (a `mem1 train` run) nor metrics.jsonl "
              "(a verl run with the file logger)", file=sys.stderr)  # fmt: skip
        return 2
    paths = write_learning_curve(rows, run_dir, title=title)
    try:
        print(summarize_run(run_dir))
    except FileNotFoundError as exc:
        print(f"(no held-out evaluations: {exc})")
    print("\nwrote " + ", ".join(str(p) for p in paths))
    return 0
