"""Run many episodes at once: bounded concurrency, a progress bar, records streamed to JSONL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from verl_mem1.records import EpisodeRecord, Task
from verl_mem1.rollout.backends.base import LLMBackend
from verl_mem1.rollout.environment import Environment
from verl_mem1.rollout.episode import EpisodeConfig, run_episode
from verl_mem1.tasks.rewards import RewardFn


async def run_episodes(
    tasks: Sequence[Task],
    backend: LLMBackend,
    env: Environment,
    tokenizer,
    config: EpisodeConfig | Callable[[Task], EpisodeConfig],
    *,
    concurrency: int = 16,
    reward_fn: RewardFn | None = None,
    on_episode: Callable[[EpisodeRecord], None] | None = None,
    progress: bool = True,
    desc: str = "episodes",
) -> list[EpisodeRecord]:
    """Run every task once; results come back in task order, ``on_episode`` sees them as they finish.

    ``config`` is one ``EpisodeConfig`` for every task, or a function of the task (``rollout.configure``: a task's
    own tags and turn budget fill what the run's ``Mem1Config`` leaves unset)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(tasks), desc=desc, unit="ep", disable=not progress)

    async def one(task: Task) -> EpisodeRecord:
        async with gate:
            settings = config(task) if callable(config) else config
            record = await run_episode(task, backend, env, tokenizer, settings, reward_fn=reward_fn)
        if on_episode is not None:
            on_episode(record)
        bar.update(1)
        return record

    try:
        return list(await asyncio.gather(*(one(t) for t in tasks)))
    finally:
        bar.close()


def write_jsonl(records: Sequence[EpisodeRecord], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")


def read_episodes(path: str | Path) -> list[EpisodeRecord]:
    """Read an episodes JSONL file written by ``mem1 rollout``."""
    records = []
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    records.append(EpisodeRecord.from_dict(json.loads(line)))
                except (json.JSONDecodeError, TypeError) as exc:
                    raise ValueError(f"{path}:{lineno}: not an episode record ({exc})") from exc
    return records
