"""Run many episodes at once: bounded concurrency, a progress bar, records streamed to JSONL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from tqdm.auto import tqdm

from verl_mem1.jsonl import iter_json_objects, write_jsonl
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


def append_episode(fh: TextIO, record: EpisodeRecord) -> None:
    """Append one episode record to an open JSONL file, flushed: streamed as episodes finish, so a stopped run keeps
    what it played."""
    fh.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    fh.flush()


def write_episodes(path: str | Path, records: Sequence[EpisodeRecord]) -> Path:
    """Episode records as JSONL, one per line (what ``read_episodes``, ``mem1 sft`` and ``mem1 view`` read)."""
    return write_jsonl(path, (record.to_dict() for record in records))


def read_episodes(path: str | Path) -> list[EpisodeRecord]:
    """Read an episodes JSONL file written by ``mem1 rollout``/``eval``/``trajectories``; a line that is not an
    episode record fails naming the file and line."""
    records = []
    for lineno, row in iter_json_objects(path):
        try:
            records.append(EpisodeRecord.from_dict(row))
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}:{lineno}: not an episode record ({exc})") from exc
    return records
