"""``mem1 tiny-model``: write a tiny random Qwen2 model with the real Qwen2.5 tokenizer.

The work is :func:`verl_mem1.tiny_model.build_tiny_model` (transformers loads only when the command runs).
"""

from __future__ import annotations

import argparse
from typing import Any


def add_tiny_model_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 tiny-model`` on an argparse subparsers object."""
    parser = subparsers.add_parser("tiny-model", help="write a tiny random Qwen2 model with the real Qwen2.5 tokenizer")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    parser.add_argument("--hidden-size", type=int, default=64, help="hidden size (default 64)")
    parser.add_argument("--num-layers", type=int, default=2, help="decoder layers (default 2)")
    parser.set_defaults(func=_cmd_tiny_model)
    return parser


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from verl_mem1.tiny_model import build_tiny_model

    out = build_tiny_model(args.out, seed=args.seed, hidden_size=args.hidden_size, num_layers=args.num_layers)
    print(f"wrote tiny Qwen2 model and Qwen2.5 tokenizer to {out}")
    return 0
