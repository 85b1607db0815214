"""``mem1 report``: a markdown table and PNG plots of accuracy and peak tokens against the number of objectives.

The work is :func:`verl_mem1.evaluation.report.write_report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_report_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 report`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "report",
        help="table and plots of accuracy and peak tokens against the number of objectives",
        description="Read the metrics.json of `mem1 eval` runs; write report.md and report.png (one line per policy), "
        "and view/index.html, the runs' episodes turn by turn (`mem1 view`), linked from report.md.",
    )
    parser.add_argument("runs", nargs="+", help="`mem1 eval` output directories")
    parser.add_argument("--out", default="report", help="output directory (default ./report)")
    parser.set_defaults(func=_cmd_report)
    return parser


def _cmd_report(args: argparse.Namespace) -> int:
    from verl_mem1.evaluation.report import write_report
    from verl_mem1.viewer.page import write_report_page

    try:
        table, png = write_report(args.runs, args.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"mem1 report: {exc}", file=sys.stderr)
        return 2
    print(table)
    print(f"\nwrote {Path(args.out) / 'report.md'} and {png}; {write_report_page(args.runs, args.out)}")
    return 0
