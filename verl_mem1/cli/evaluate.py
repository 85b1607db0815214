"""``mem1 eval``: run a model on a task file with one context policy; write episodes and ``metrics.json``.

The work is :func:`verl_mem1.evaluation.harness.evaluate`; this module parses the options (those of ``mem1
rollout`` plus ``--reduce``) and prints the summary.
"""

from __future__ import annotations

import argparse
from typing import Any

from verl_mem1.cli.rollout import add_backend_arguments, add_environment_arguments, add_episode_arguments


def add_eval_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 eval`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model: accuracy (EM, F1; WebShop: reward) and efficiency (peak tokens, dependency, time)",
        description=(
            "Run a model (hub name, local path, or the URL of an OpenAI-compatible server such as `vllm serve`) "
            "on a task file with one context policy; write episodes.jsonl and metrics.json to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_backend_arguments(parser)
    add_environment_arguments(parser)
    add_episode_arguments(parser)
    parser.add_argument("--reduce", choices=["sum", "mean"], default="sum", help="combine objectives' scores")
    parser.add_argument("--out", required=True, help="output directory")
    parser.set_defaults(func=_cmd_eval)
    return parser


def _cmd_eval(args: argparse.Namespace) -> int:
    import asyncio

    from verl_mem1.cli.rollout import setup_run
    from verl_mem1.evaluation.harness import evaluate

    run = setup_run(args, "eval")
    if run is None:
        return 2
    config, tasks, backend, tokenizer, env = run

    async def main():
        try:
            return await evaluate(
                tasks,
                backend,
                env,
                tokenizer,
                config,
                args.out,
                model=args.model,
                concurrency=args.concurrency,
                reduce=args.reduce,
            )
        finally:
            await env.aclose()

    metrics = asyncio.run(main())
    s = metrics["summary"]
    accuracy = (
        f"EM {s['em']:.3f}, F1 {s['f1']:.3f}"
        if s["em"] is not None
        else f"reward {s['reward']:.3f}, success {s['success_rate']:.3f}"
    )
    print(
        f"{s['episodes']} episodes, context {metrics['context_policy']}: {accuracy}, "
        f"peak tokens {s['peak_tokens']:.0f} (max {s['peak_tokens_max']}), "
        f"time p50 {s['inference_time_s']['p50']:.2f} s; wrote {args.out}/metrics.json"
    )
    return 0
