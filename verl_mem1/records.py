"""The records every layer shares: a ``Task`` (what to play) and an ``EpisodeRecord`` (what was played, token-exact).

Tasks are read from verl RL parquet or simple JSONL (``load_tasks``); episode records are what ``mem1 rollout``,
``mem1 eval`` and the trainers write and read. Nothing here imports another module of the project except the JSONL
reader, so rollout, training, tasks and evaluation can all depend on it without cycles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

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


def task_from_mapping(row: dict[str, Any], where: str, index: int) -> Task:
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
        extra_info={k: v for k, v in ((k, _plain(v)) for k, v in extra.items()) if v is not None},
    )


def _plain(value: Any) -> Any:
    """A scalar as is; a mapping as a dict of its scalar entries (parquet fills keys missing in a row with null);
    anything else (lists, arrays) None: ``extra_info`` carries settings and reference values, not data."""
    if isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "items"):
        return {str(k): v for k, v in value.items() if isinstance(v, str | int | float | bool)}
    return None


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
            tasks.append(task_from_mapping(row, str(path), i))
    else:
        for lineno, row in iter_json_objects(path):
            if limit is not None and len(tasks) >= limit:
                break
            tasks.append(task_from_mapping(row, f"{path}:{lineno}", lineno))
    if not tasks:
        raise ValueError(f"{path}: no tasks found")
    return tasks


# done: the environment ended the episode (a WebShop purchase); env_error: no session could be opened
Termination = Literal["answer", "done", "max_turns", "invalid_action", "context_limit", "env_error"]


@dataclass
class TurnRecord:
    index: int
    context_ids: list[int]
    generated_ids: list[int]
    logprobs: list[float]
    text: str
    internal_state: str | None
    action: dict[str, str]  # {"kind", "text", "reason"}
    observation_ids: list[int]
    finish_reason: str
    timings: dict[str, float]


@dataclass
class EpisodeRecord:
    id: str
    data_source: str
    questions: list[str]
    ground_truth: list[list[str]]
    context_policy: str
    tag_set: str
    sampling: dict[str, Any]
    prompt_ids: list[int]
    turns: list[TurnRecord] = field(default_factory=list)
    final_answer: str | None = None
    termination: Termination = "max_turns"
    reward: float | None = None
    wall_time_s: float = 0.0
    error: str | None = None  # why the environment could not start the episode (termination "env_error")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeRecord:
        data = dict(data)
        data["turns"] = [TurnRecord(**t) for t in data.get("turns", [])]
        return cls(**data)

    @property
    def invalid_turns(self) -> int:
        """Turns whose action was invalid (unparseable, or refused by the environment)."""
        return sum(t.action["kind"] == "invalid" for t in self.turns)

    @property
    def peak_tokens(self) -> int:
        """Max over turns of the context length plus the tokens generated that turn."""
        return max((len(t.context_ids) + len(t.generated_ids) for t in self.turns), default=len(self.prompt_ids))


# The rows the MEM1 agent loop appends under verl's trainer (``<trainer.rollout_data_dir>/mem1_episodes/*.jsonl``) and
# ``mem1 view`` reads: {"step": the global step of the weights that sampled it (0: the initial model; training step N
# samples with N-1's in verl's synchronous trainer), "model": the model path, "mem1_episode": the record}.
EPISODES_DIR = "mem1_episodes"
EPISODE_KEY = "mem1_episode"
MODEL_KEY = "model"
STEP_KEY = "step"


def episode_log_row(record: EpisodeRecord, *, step: int | None, model: str) -> dict[str, Any]:
    """One agent-loop log row: the record with the weights' step and the model (hence tokenizer) that sampled it."""
    return {STEP_KEY: step, MODEL_KEY: model, EPISODE_KEY: record.to_dict()}
