"""``mem1 serve llm``: the OpenAI-compatible LLM server.

Only the stdlib is imported at module level: ``verl_mem1.cli`` imports this module to build ``mem1 --help``,
so torch, transformers, fastapi and uvicorn are imported by the handler.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from env_servers.llm import DEFAULT_PORT
from env_servers.serve_options import add_server_options, server_settings

EXIT_USAGE = 2
PROG = "mem1 serve llm"


def _serve_llm(args: argparse.Namespace) -> int:
    from env_servers.llm.server import serve_llm

    try:
        serve_llm(
            args.model,
            device=args.device,
            dtype=args.dtype,
            max_batch_size=args.max_batch_size,
            served_name=args.served_name,
            seed=args.seed,
            **server_settings(args),
        )
    except (ValueError, OSError) as e:  # unknown model path/name, bad device, port in use
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def add_serve_llm_command(subparsers: Any) -> None:
    """Add ``llm`` to ``mem1 serve``."""
    p = subparsers.add_parser(
        "llm",
        help="serve a local Hugging Face model over an OpenAI-compatible /v1/completions API (like `vllm serve`)",
        description=(
            "Serve a causal LM with transformers, batching concurrent requests. POST /v1/completions takes a "
            "string or token-id prompt and vLLM's return_tokens_as_token_ids / return_token_ids extensions; "
            "log-probs are log_softmax(logits / temperature) of the sampled tokens. Use the URL with "
            "`mem1 rollout --llm-url`."
        ),
    )
    p.add_argument("--model", required=True, metavar="NAME_OR_PATH", help="Hugging Face model name or local path")
    p.add_argument(
        "--served-name", default=None, metavar="NAME", help="model name clients must send (default: --model)"
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype (default float32)"
    )
    p.add_argument(
        "--max-batch-size", type=int, default=16, metavar="N", help="most requests decoded together (default 16)"
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    add_server_options(p, DEFAULT_PORT)
    p.set_defaults(func=_serve_llm)
