"""The ``mem1`` command: one entry point, one subcommand per capability.

Each subcommand module registers its own arguments and imports its heavy dependencies (torch, faiss,
fastapi, ...) only when it runs, so ``mem1 --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from verl_mem1.tiny_model import build_tiny_model

    out = build_tiny_model(args.out, seed=args.seed, hidden_size=args.hidden_size, num_layers=args.num_layers)
    print(f"wrote tiny Qwen2 model and Qwen2.5 tokenizer to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from env_servers.llm.cli import add_serve_llm_command
    from env_servers.retrieval.cli import add_corpus_commands, add_index_commands, add_serve_command
    from env_servers.websearch.cli import add_serve_websearch_command
    from env_servers.webshop.cli import add_serve_webshop_command
    from verl_mem1.cli.train import add_train_command
    from verl_mem1.demo import add_demo_command
    from verl_mem1.evaluation.harness import add_eval_command
    from verl_mem1.evaluation.report import add_report_command
    from verl_mem1.rollout.cli import add_rollout_command
    from verl_mem1.tasks.compose import add_compose_command
    from verl_mem1.tasks.webshop import add_webshop_tasks_command
    from verl_mem1.training.parity import add_parity_command

    parser = argparse.ArgumentParser(
        prog="mem1",
        description="MEM1 on verl: constant-memory multi-turn agents — rollout, evaluation, environment servers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiny = sub.add_parser("tiny-model", help="write a tiny random Qwen2 model with the real Qwen2.5 tokenizer")
    tiny.add_argument("--out", required=True, help="output directory")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    tiny.add_argument("--hidden-size", type=int, default=64, help="hidden size (default 64)")
    tiny.add_argument("--num-layers", type=int, default=2, help="decoder layers (default 2)")
    tiny.set_defaults(func=_cmd_tiny_model)

    add_rollout_command(sub)
    add_compose_command(sub)
    add_webshop_tasks_command(sub)
    add_eval_command(sub)
    add_train_command(sub)
    add_parity_command(sub)
    add_report_command(sub)
    add_demo_command(sub)

    corpus = sub.add_parser("corpus", help="build retrieval corpora (JSONL {id, contents})")
    add_corpus_commands(corpus.add_subparsers(dest="corpus_command", required=True, metavar="SOURCE"))
    index = sub.add_parser("index", help="build retrieval indexes")
    add_index_commands(index.add_subparsers(dest="index_command", required=True, metavar="ACTION"))
    serve = sub.add_parser("serve", help="run a server: retrieval, websearch (Serper), webshop or an LLM (OpenAI API)")
    serve_sub = serve.add_subparsers(dest="serve_command", required=True, metavar="SERVER")
    add_serve_command(serve_sub)
    add_serve_websearch_command(serve_sub)
    add_serve_webshop_command(serve_sub)
    add_serve_llm_command(serve_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    forward = getattr(args, "accepts_unknown", None)  # e.g. `mem1 train` hands the rest to Hydra
    if forward:
        setattr(args, forward, unknown)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
