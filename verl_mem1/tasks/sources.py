"""Single-objective QA sources: HotpotQA, Natural Questions (open), Bamboogle and plain JSONL.

Every source is read into the same :class:`QAItem` so composition, splitting and scoring never care where a
question came from. A source is named by a spec ``KIND[:PATH]``:

========================  ===================================================================================
spec                      reads
========================  ===================================================================================
``hotpotqa:PATH``         HotpotQA: JSONL (``id``/``_id``, ``question``, ``answer``) or, for a ``.json``
                          suffix, the original HotpotQA JSON list (``hotpot_dev_distractor_v1.json`` etc.)
``nq:PATH``               NQ-open JSONL ``{question, answer[]}``, or, for a ``.parquet`` suffix, Search-R1's verl
                          parquet (``id``, ``question``, ``golden_answers`` or ``reward_model.ground_truth.target``)
``bamboogle:PATH``        Bamboogle's JSON list ``{Question, Answer, ...}`` (gold = ``Answer``, as Search-R1 and
                          FlashRAG score it)
``jsonl:PATH``            any JSONL with ``question`` and ``answers`` or ``answer`` (a string or a list of
                          aliases), optional ``id``
========================  ===================================================================================

Without ``:PATH`` a bundled copy is used (see ``verl_mem1/data/README.md``): ``hotpotqa`` (= ``hotpotqa-dev``,
300 questions), ``hotpotqa-train`` (300, disjoint from dev), ``nq`` (NQ-open "test", 3610) and ``bamboogle`` (125).

Ids are the dataset's own where it has them, else ``SOURCE:N`` with ``N`` the JSONL line number (1-based) or
the JSON list / parquet row index (0-based), so they are stable across runs. Bad input raises ``ValueError``
naming the file, the line or row, and the problem.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verl_mem1.jsonl import iter_json_objects

__all__ = ["BUNDLED_SOURCES", "SOURCE_KINDS", "QAItem", "bundled_path", "load_source"]


@dataclass(frozen=True)
class QAItem:
    """One single-objective question with its gold aliases."""

    id: str
    question: str
    answers: list[str]
    source: str


SOURCE_KINDS: tuple[str, ...] = ("hotpotqa", "nq", "bamboogle", "jsonl")

# bundled name -> (source kind, path under verl_mem1/data)
BUNDLED_SOURCES: dict[str, tuple[str, str]] = {
    "hotpotqa": ("hotpotqa", "hotpotqa/dev.jsonl"),
    "hotpotqa-dev": ("hotpotqa", "hotpotqa/dev.jsonl"),
    "hotpotqa-train": ("hotpotqa", "hotpotqa/train.jsonl"),
    "nq": ("nq", "nq_open/NQ-open.dev.jsonl"),
    "bamboogle": ("bamboogle", "bamboogle/bamboogle.json"),
}


def bundled_path(name: str) -> Path:
    """Path of a bundled source file (``hotpotqa``, ``hotpotqa-train``, ``nq``, ``bamboogle``)."""
    if name not in BUNDLED_SOURCES:
        raise ValueError(f"unknown bundled source {name!r}; choose one of {', '.join(BUNDLED_SOURCES)}")
    return Path(str(importlib.resources.files("verl_mem1") / "data" / BUNDLED_SOURCES[name][1]))


def _aliases(raw: Any, where: str) -> list[str]:
    """Gold aliases as a de-duplicated list of non-empty strings; empty aliases are dropped (they would
    reward an empty answer)."""
    if isinstance(raw, dict) and "target" in raw:  # Search-R1's reward_model.ground_truth
        raw = raw["target"]
    if hasattr(raw, "tolist"):  # numpy arrays from parquet
        raw = raw.tolist()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise ValueError(f"{where}: answers must be a string or a list of strings, got {raw!r}")
    out: list[str] = []
    for alias in raw:
        alias = alias.strip()
        if alias and alias not in out:
            out.append(alias)
    if not out:
        raise ValueError(f"{where}: no answers")
    return out


def _item(
    row: dict[str, Any], *, source: str, where: str, fallback_id: str, q_key: str, a_keys: tuple[str, ...]
) -> QAItem:
    question = row.get(q_key)
    if question is None:
        raise ValueError(f"{where}: missing field {q_key!r}")
    if not isinstance(question, str):
        raise ValueError(f"{where}: {q_key!r} must be a string, got {type(question).__name__}")
    if not question.strip():
        raise ValueError(f"{where}: empty question")
    raw_answers = next((row[k] for k in a_keys if row.get(k) is not None), None)
    if raw_answers is None:
        raise ValueError(f"{where}: missing answers (expected {' or '.join(repr(k) for k in a_keys)})")
    raw_id = row.get("id", row.get("_id"))
    item_id = str(raw_id) if raw_id is not None and str(raw_id).strip() else fallback_id
    return QAItem(item_id, question.strip(), _aliases(raw_answers, where), source)


def _iter_json_list(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: item {i}: expected a JSON object, got {type(row).__name__}")
        yield i, row


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise ValueError(f"{path}: cannot read parquet ({exc})") from None
    for i, row in enumerate(frame.to_dict(orient="records")):
        reward_model = row.get("reward_model")
        if row.get("golden_answers") is None and isinstance(reward_model, dict):
            row["golden_answers"] = reward_model.get("ground_truth")
        yield i, row


def _rows(kind: str, path: Path) -> tuple[Iterator[tuple[int, dict[str, Any]]], str]:
    """Rows of a source file and how to name one in messages (``{n}`` is its line or index)."""
    if kind == "bamboogle" or (kind == "hotpotqa" and path.suffix == ".json"):
        return _iter_json_list(path), f"{path}: item {{n}}"
    if kind == "nq" and path.suffix == ".parquet":
        return _iter_parquet(path), f"{path}: row {{n}}"
    return iter_json_objects(path), f"{path}:{{n}}"


# source kind -> (question field, answer fields in order of preference)
_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "hotpotqa": ("question", ("answer",)),
    "nq": ("question", ("answer", "answers", "golden_answers")),
    "bamboogle": ("Question", ("Answer",)),
    "jsonl": ("question", ("answers", "answer")),
}


def _load(kind: str, path: Path) -> list[QAItem]:
    source = path.stem if kind == "jsonl" else kind
    q_key, a_keys = _FIELDS[kind]
    rows, where_fmt = _rows(kind, path)
    items: list[QAItem] = []
    first_seen: dict[str, str] = {}
    for n, row in rows:
        where = where_fmt.format(n=n)
        item = _item(row, source=source, where=where, fallback_id=f"{source}:{n}", q_key=q_key, a_keys=a_keys)
        if item.id in first_seen:
            raise ValueError(f"{where}: duplicate id {item.id!r} (first at {first_seen[item.id]})")
        first_seen[item.id] = where
        items.append(item)
    if not items:
        raise ValueError(f"{path}: no questions found")
    return items


def load_source(spec: str) -> list[QAItem]:
    """Load the questions named by ``KIND[:PATH]`` (see the module docstring for kinds and bundled names)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty source spec {spec!r}; expected KIND[:PATH]")
    name, sep, raw_path = spec.strip().partition(":")
    if not sep:
        if name in BUNDLED_SOURCES:
            return _load(BUNDLED_SOURCES[name][0], bundled_path(name))
        if name in SOURCE_KINDS:
            raise ValueError(f"source {spec!r} needs a path: {name}:PATH")
        raise ValueError(
            f"unknown source {spec!r}; expected KIND:PATH with KIND one of {', '.join(SOURCE_KINDS)}, "
            f"or a bundled name: {', '.join(BUNDLED_SOURCES)}"
        )
    if name not in SOURCE_KINDS:
        hint = " (bundled names take no path)" if name in BUNDLED_SOURCES else ""
        raise ValueError(f"unknown source kind {name!r} in {spec!r}{hint}; expected one of {', '.join(SOURCE_KINDS)}")
    if not raw_path.strip():
        raise ValueError(f"source {spec!r} has an empty path")
    path = Path(raw_path.strip()).expanduser()
    if not path.is_file():
        raise ValueError(f"{path}: file not found (source {spec!r})")
    return _load(name, path)
