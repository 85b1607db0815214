"""``mem1 curve``: a training run's learning curve (CSV, JSON, PNG) from verl's metrics log.

The work is :mod:`verl_mem1.evaluation.curve`; held-out comparisons are ``mem1 compare``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_curve_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 curve`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "curve",
        help="a training run's learning curve (CSV, JSON, PNG) from verl's metrics log",
        description="Draw learning_curve.{json,csv,png} of a verl trainer run from its metrics.jsonl (verl's file "
        "logger, trainer.logger=[console,file]: `mem1 train` writes it into the run folder, `make learn` sets "
        "VERL_FILE_LOGGER_PATH=RUN_DIR/metrics.jsonl): train reward and its moving mean, verl's held-out reward, "
        "turns and response tokens per episode, the seconds of each phase. Held-out checkpoints are compared with "
        "`mem1 eval` and `mem1 compare`.",
    )
    parser.add_argument("run_dir", help="the run folder (trainer.default_local_dir)")
    parser.set_defaults(func=_cmd_curve)
    return parser


def _cmd_curve(args: argparse.Namespace) -> int:
    from verl_mem1.evaluation.curve import VERL_METRICS_FILE, read_verl_metrics, write_learning_curve

    run_dir = Path(args.run_dir)
    try:
        rows = read_verl_metrics(run_dir)
    except ValueError as exc:
        print(f"mem1 curve: error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        why = "trainer.logger=[console,file] writes it: `mem1 train` into the run folder, verl at VERL_FILE_LOGGER_PATH"
        print(f"mem1 curve: error: {run_dir} has no {VERL_METRICS_FILE} ({why})", file=sys.stderr)
        return 2
    paths = write_learning_curve(rows, run_dir, title=f"verl trainer: {run_dir.name}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
