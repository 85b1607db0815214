"""``mem1 parity``: do training-time log-probs reproduce the rollout's, token for token, on every backend?

The work is :func:`verl_mem1.training.parity.parity_report`; this module loads the model and the episodes, prints
the report and sets the exit status (1 when any backend is off by more than the tolerance). torch and
transformers load only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from verl_mem1.training.parity import ALL_BACKENDS, DEFAULT_TOLERANCE, format_report, parity_report


def _cmd_parity(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from verl_mem1.rollout.runner import read_episodes

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    records = read_episodes(args.episodes)
    if args.limit is not None:
        records = records[: args.limit]
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=dtype).to(args.device)
    report = parity_report(model, records, args.backends, tolerance=args.tolerance, compile_flex=not args.eager_flex)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    if not report["ok"]:
        bad = [n for n, b in report["backends"].items() if not b["ok"]]
        print(f"parity FAILED for {', '.join(bad)} (tolerance {args.tolerance:g})", file=sys.stderr)
        return 1
    return 0


def add_parity_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 parity`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "parity",
        help="check that training-time log-probs (packed MEM1 forward) equal the rollout's",
        description=(
            "Score every generated token of recorded episodes with the packed MEM1 forward under each attention "
            "backend (and the per-turn alternative), and compare with the log-probs recorded at rollout. "
            "Exits 1 if any backend's max |delta| exceeds --tolerance."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="the model that produced the episodes (HF name or path)")
    parser.add_argument("--episodes", required=True, help="episodes JSONL written by `mem1 rollout`")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=ALL_BACKENDS,
        default=None,
        help="backends to check (default: dense flex segment_groups per_turn; plus flash for a fp16/bf16 CUDA model)",
    )
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max allowed |delta| per token")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--device", default="cpu", help="device to run the model on (cpu, cuda, cuda:1, ...)")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype (fp32 for 1e-4)"
    )
    parser.add_argument("--limit", type=int, default=None, help="check only the first N episodes")
    parser.add_argument(
        "--eager-flex",
        action="store_true",
        help="run flex attention uncompiled (no compile wait; torch's unfused reference, O(L^2) memory)",
    )
    parser.set_defaults(func=_cmd_parity)
    return parser
