"""``mem1 compose``: compose N-objective QA tasks into verl RL parquet, with an optional held-out test split.

The work is :mod:`verl_mem1.tasks.compose` (``split_items``, ``compose_tasks``, ``write_tasks_parquet``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from verl_mem1.tasks.compose import compose_tasks, split_items, write_tasks_parquet
from verl_mem1.tasks.sources import BUNDLED_SOURCES, QAItem, load_source


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def _cmd_compose(args: argparse.Namespace) -> int:
    try:
        pools = [load_source(spec) for spec in args.source]
        test_pools: list[list[QAItem]] = []
        if args.test_out:
            splits = [split_items(pool, args.test_fraction, args.split_seed) for pool in pools]
            pools = [train for train, _ in splits]
            test_pools = [test for _, test in splits]
            for spec, pool, test in zip(args.source, pools, test_pools, strict=True):
                if not pool or not test:
                    side = "train" if not pool else "test"
                    raise ValueError(f"source {spec}: the {side} split is empty (test fraction {args.test_fraction})")
        common = dict(
            objectives=args.objectives,
            seed=args.seed,
            mix_sources=args.mix_sources,
            tags=args.tags,
            max_turns=args.max_turns,
            agent_name=args.agent_name,
            passes=args.passes,
        )
        rows = compose_tasks(pools, count=args.count, split="train", **common)
        test_rows = []
        if args.test_out:
            try:
                test_rows = compose_tasks(test_pools, count=args.test_count, split="test", **common)
            except ValueError as exc:
                raise ValueError(f"test split: {exc}") from None
        out = write_tasks_parquet(rows, args.out)
        print(f"wrote {len(rows)} tasks of {args.objectives} objectives to {out}")
        if args.test_out:
            test_out = write_tasks_parquet(test_rows, args.test_out)
            print(f"wrote {len(test_rows)} test tasks of {args.objectives} objectives to {test_out}")
    except (ValueError, OSError) as exc:
        print(f"mem1 compose: error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_compose_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 compose`` on an argparse subparsers object."""
    bundled = ", ".join(BUNDLED_SOURCES)
    parser = subparsers.add_parser(
        "compose",
        help="compose N-objective QA tasks into verl RL parquet",
        description=(
            "Compose multi-objective QA tasks as in the MEM1 paper: N questions asked together, answered as "
            "'a1; a2; ...'. Writes verl RL parquet (one row per task; ground truth = one alias list per question)."
        ),
        epilog=(
            "Source specs: hotpotqa:PATH (JSONL, or the original .json list), nq:PATH (NQ-open JSONL or Search-R1 "
            f".parquet), bamboogle:PATH (JSON list), jsonl:PATH (question + answers/answer); bundled: {bundled}. "
            "Example: mem1 compose --source hotpotqa-train --source nq --objectives 2 --seed 0 --out train.parquet "
            "--test-out test.parquet --test-fraction 0.1"
        ),
    )
    parser.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="SPEC",
        help="question source KIND:PATH or a bundled name; repeat to combine sources",
    )
    parser.add_argument(
        "--objectives", type=_positive_int, required=True, metavar="N", help="questions per task (1, 2, 4, 8, 16...)"
    )
    parser.add_argument(
        "--count",
        type=_positive_int,
        default=None,
        metavar="K",
        help="number of (train) tasks; default: as many as the questions allow, each question used once",
    )
    parser.add_argument(
        "--passes",
        type=_positive_int,
        default=1,
        metavar="P",
        help="use each question in up to P tasks, reshuffled every pass (more tasks from a small pool; default 1)",
    )
    parser.add_argument("--seed", type=int, required=True, help="composition seed (which questions go together)")
    parser.add_argument("--out", required=True, metavar="PATH", help="output parquet for the (train) tasks")
    parser.add_argument(
        "--test-out",
        metavar="PATH",
        default=None,
        help="also write test tasks here, from questions held out by --test-fraction",
    )
    parser.add_argument(
        "--test-fraction",
        type=_fraction,
        default=0.1,
        help="share of questions held out for --test-out, by a hash of the question text (default 0.1)",
    )
    parser.add_argument(
        "--test-count",
        type=_positive_int,
        default=None,
        metavar="K",
        help="number of test tasks (default: as many as the held-out questions allow)",
    )
    parser.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the train/test hash (default 0); keep it fixed so splits of different runs never overlap",
    )
    parser.add_argument(
        "--mix-sources", action="store_true", help="mix sources within a task (default: each task from one source)"
    )
    parser.add_argument(
        "--tags", default="paper", choices=["paper", "search_r1"], help="prompt dialect / tag set (default paper)"
    )
    parser.add_argument(
        "--max-turns",
        type=_positive_int,
        default=None,
        help="state the turn budget in the prompt (default: not stated)",
    )
    parser.add_argument(
        "--agent-name", default=None, help="verl agent loop name stored in each row's agent_name column (optional)"
    )
    parser.set_defaults(func=_cmd_compose)
    return parser
