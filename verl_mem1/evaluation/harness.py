"""Evaluate a model on a task file with one context policy: write episodes and ``metrics.json`` (``mem1 eval``)."""

from __future__ import annotations

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
from verl_mem1.rollout.runner import append_episode, run_episodes
from verl_mem1.tasks.rewards import answer_reward


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

    shown = config(tasks[0] if tasks else None) if callable(config) else config

    with (out / "episodes.jsonl").open("w", encoding="utf-8") as fh:
        records = await run_episodes(
            tasks,
            backend,
            env,
            tokenizer,
            config,
            concurrency=concurrency,
            reward_fn=answer_reward("em", reduce),  # the reported metric
            on_episode=lambda record: append_episode(fh, record),
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
