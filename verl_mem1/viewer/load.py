"""Read episode records for the viewer, from whichever tool wrote them, with errors that name the file and line.

Two shapes of row are read:

- ``EpisodeRecord`` rows (``mem1 eval``/``mem1 rollout``/``mem1 trajectories``): a ``metrics.json`` beside the file
  names the model, hence the tokenizer;
- the MEM1 agent loop's rows under verl's trainer (``{"step", "model", "mem1_episode": record}``), which it appends
  to ``<trainer.rollout_data_dir>/mem1_episodes/`` (verl's own dump there holds decoded text only).

A directory stands for its ``episodes.jsonl`` (a ``mem1 eval`` run), else its ``mem1_episodes/*.jsonl`` (a verl
rollout dump folder), else every ``*.jsonl`` in it, else its runs' ``*/episodes.jsonl`` (a folder of eval runs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verl_mem1.jsonl import iter_json_objects
from verl_mem1.records import EPISODE_KEY, EPISODES_DIR, MODEL_KEY, STEP_KEY, EpisodeRecord


@dataclass
class LoadedEpisode:
    """One episode record and where it came from."""

    record: EpisodeRecord
    source: str  # "path:line"
    step: int | None  # the weights' global step under verl's trainer; None for eval/rollout files
    model: str | None  # the model path recorded with the episode, if any


def episode_files(paths: Sequence[str | Path]) -> list[Path]:
    """The JSONL files the given files and directories stand for (raises ``FileNotFoundError`` for none)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if (path / "episodes.jsonl").exists():
                files.append(path / "episodes.jsonl")
                continue
            found = (
                sorted((path / EPISODES_DIR).glob("*.jsonl"))
                or sorted(path.glob("*.jsonl"))
                or sorted(path.glob("*/episodes.jsonl"))  # a folder of `mem1 eval` runs
            )
            if not found:
                raise FileNotFoundError(
                    f"{path}: no episodes.jsonl, {EPISODES_DIR}/*.jsonl, *.jsonl or */episodes.jsonl in this folder"
                )
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"episode file not found: {path}")
    return files


def _model_beside(path: Path) -> str | None:
    """The model a ``mem1 eval`` run names in the ``metrics.json`` beside its episodes."""
    metrics = path.parent / "metrics.json"
    if not metrics.exists():
        return None
    try:
        return json.loads(metrics.read_text(encoding="utf-8")).get("model") or None
    except (ValueError, AttributeError):
        return None


def _record(data: dict[str, Any], where: str) -> EpisodeRecord:
    try:
        return EpisodeRecord.from_dict(data)
    except TypeError as exc:  # a missing or unexpected field
        raise ValueError(f"{where}: not a MEM1 episode record ({exc})") from None


def parse_row(row: dict[str, Any], where: str, default_model: str | None) -> LoadedEpisode:
    """One JSONL row as a ``LoadedEpisode``; ``ValueError`` naming ``where`` for a row that holds no episode."""
    if EPISODE_KEY in row:
        data = row[EPISODE_KEY]
        if not isinstance(data, dict):
            raise ValueError(f"{where}: '{EPISODE_KEY}' is not an episode record (got {type(data).__name__})")
        step = row.get(STEP_KEY)
        return LoadedEpisode(
            _record(data, where), where, int(step) if step is not None else None, row.get(MODEL_KEY) or default_model
        )
    if "turns" in row and "prompt_ids" in row:
        return LoadedEpisode(_record(row, where), where, None, default_model)
    if "input" in row and "output" in row:
        raise ValueError(
            f"{where}: verl's own generation dump (decoded text only); the MEM1 agent loop writes token-exact "
            f"episodes beside it, in {EPISODES_DIR}/: view that folder"
        )
    raise ValueError(f"{where}: not a MEM1 episode record (no 'turns' and 'prompt_ids', no '{EPISODE_KEY}')")


def load_episodes(paths: Sequence[str | Path], *, limit: int | None = None) -> list[LoadedEpisode]:
    """Every episode in the given files and directories, in file order (at most ``limit``)."""
    episodes: list[LoadedEpisode] = []
    for path in episode_files(paths):
        default_model = _model_beside(path)
        for lineno, row in iter_json_objects(path):
            if limit is not None and len(episodes) >= limit:
                return episodes
            episodes.append(parse_row(row, f"{path}:{lineno}", default_model))
    if not episodes:
        raise ValueError(f"no episodes in {', '.join(str(p) for p in paths)}")
    return episodes
