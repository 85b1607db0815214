"""Read tasks for the episode loop from verl RL parquet or from simple JSONL."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verl_mem1.jsonl import iter_json_objects


@dataclass
class Task:
    """One (possibly multi-objective) task: its questions, one alias list per question, and its prompt."""

    id: str
    questions: list[str]
    ground_truth: list[list[str]]
    prompt_messages: list[dict[str, str]] | None = None  # None: built from the questions with the tag set
    data_source: str = "unknown"
    extra_info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_objectives(self) -> int:
        return len(self.questions)


def _alias_lists(raw: Any, n_questions: int, where: str) -> list[list[str]]:
    """Normalise answers to one alias list per question."""
    if isinstance(raw, dict) and "target" in raw:  # Search-R1's reward_model.ground_truth
        raw = raw["target"]
    if hasattr(raw, "tolist"):
        raw = raw.tolist()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: answers must be a string or a non-empty list, got {raw!r}")
    raw = [r.tolist() if hasattr(r, "tolist") else r for r in raw]
    if all(isinstance(r, str) for r in raw):
        return [list(raw)] if n_questions == 1 else [[r] for r in raw]
    if all(isinstance(r, list) and r and all(isinstance(a, str) for a in r) for r in raw):
        return [list(r) for r in raw]
    raise ValueError(f"{where}: answers must be strings or lists of strings, got {raw!r}")


def _task_from_mapping(row: dict[str, Any], where: str, index: int) -> Task:
    extra = row.get("extra_info") or {}
    if hasattr(extra, "items"):
        extra = dict(extra)
    questions = row.get("questions") or extra.get("questions")
    if questions is None:
        question = row.get("question") or extra.get("question")
        questions = [question] if question is not None else None
    if hasattr(questions, "tolist"):
        questions = questions.tolist()
    prompt = row.get("prompt")
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if isinstance(prompt, list):
        prompt = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    else:
        prompt = None
    if not questions and prompt is None:
        raise ValueError(f"{where}: row {index} has neither 'question(s)' nor a chat 'prompt'")
    questions = [str(q) for q in (questions or [])]
    if any(not q.strip() for q in questions):
        raise ValueError(f"{where}: row {index} has an empty question")
    raw_answers = None
    reward_model = row.get("reward_model")
    if isinstance(reward_model, dict) and "ground_truth" in reward_model:
        raw_answers = reward_model["ground_truth"]
    for key in ("answers", "golden_answers", "answer"):
        if raw_answers is None and row.get(key) is not None:
            raw_answers = row[key]
    if extra.get("goal_index") is not None:  # an environment-scored task (WebShop): no answers to match
        ground_truth: list[list[str]] = []
    elif raw_answers is None:
        raise ValueError(f"{where}: row {index} has no answers ('answers', 'answer' or reward_model.ground_truth)")
    else:
        ground_truth = _alias_lists(raw_answers, max(len(questions), 1), f"{where}: row {index}")
    if ground_truth and questions and len(ground_truth) != len(questions):
        raise ValueError(f"{where}: row {index} has {len(questions)} questions but {len(ground_truth)} answer lists")
    task_id = row.get("id") or extra.get("id") or extra.get("index")
    return Task(
        id=str(task_id if task_id is not None else index),
        questions=questions,
        ground_truth=ground_truth,
        prompt_messages=prompt,
        data_source=str(row.get("data_source") or "unknown"),
        extra_info={k: v for k, v in extra.items() if isinstance(v, str | int | float | bool)},
    )


def load_tasks(path: str | Path, *, limit: int | None = None) -> list[Task]:
    """Load tasks from verl RL parquet or JSONL (``question``/``questions`` and ``answers``/``answer``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tasks file not found: {path}")
    tasks: list[Task] = []
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        for i, row in enumerate(frame.to_dict(orient="records")):
            if limit is not None and len(tasks) >= limit:
                break
            tasks.append(_task_from_mapping(row, str(path), i))
    else:
        for lineno, row in iter_json_objects(path):
            if limit is not None and len(tasks) >= limit:
                break
            tasks.append(_task_from_mapping(row, f"{path}:{lineno}", lineno))
    if not tasks:
        raise ValueError(f"{path}: no tasks found")
    return tasks
