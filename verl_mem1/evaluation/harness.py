"""``mem1 eval``: run a model on a task file with one context policy; write episodes and ``metrics.json``."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from verl_mem1.evaluation.metrics import episode_metrics, summarize, summarize_by_objectives
from verl_mem1.records import Task
from verl_mem1.rollout.backends.base import LLMBackend
from verl_mem1.rollout.environment import Environment
from verl_mem1.rollout.episode import EpisodeConfig
from verl_mem1.rollout.runner import run_episodes
from verl_mem1.tasks.rewards import score_answer


async def evaluate(
    tasks: Sequence[Task],
    backend: LLMBackend,
    env: Environment,
    tokenizer,
    config: EpisodeConfig | Callable[[Task], EpisodeConfig],
    out_dir: str | Path,
    *,
    model: str = "",
    concurrency: int = 16,
    reduce: str = "sum",
    progress: bool = True,
) -> dict[str, Any]:
    """Run every task once; stream records to ``episodes.jsonl``; return and write ``metrics.json``.

    ``config``: one ``EpisodeConfig``, or a function of the task (``run_episodes``); the report states the settings
    of the first task's."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def reward(answer, truth):
        return score_answer(answer, truth, reduce=reduce).em

    shown = config(tasks[0] if tasks else None) if callable(config) else config

    with (out / "episodes.jsonl").open("w", encoding="utf-8") as fh:

        def write(record):
            fh.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
            fh.flush()

        records = await run_episodes(
            tasks,
            backend,
            env,
            tokenizer,
            config,
            concurrency=concurrency,
            reward_fn=reward,
            on_episode=write,
            progress=progress,
            desc=f"eval {shown.context}",
        )
    rows = [episode_metrics(r, reduce=reduce) for r in records]
    metrics = {
        "model": model,
        "context_policy": records[0].context_policy if records else shown.context,
        "tag_set": shown.tags,
        "reduce": reduce,
        "sampling": {"temperature": shown.temperature, "top_p": shown.top_p, "top_k": shown.top_k},
        "max_new_tokens": shown.max_new_tokens,
        "wall_time_s": time.perf_counter() - started,
        "summary": summarize(rows),
        "by_objectives": {str(k): v for k, v in summarize_by_objectives(rows).items()},
        "episodes": rows,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return metrics


def add_eval_command(subparsers) -> None:
    from verl_mem1.rollout.cli import add_backend_arguments, add_environment_arguments, add_episode_arguments

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


def _cmd_eval(args: argparse.Namespace) -> int:
    from verl_mem1.rollout.cli import setup_run

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
