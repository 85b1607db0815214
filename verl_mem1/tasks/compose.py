"""Multi-objective task composition, as in the MEM1 paper: N single-objective questions asked together.

A composite task presents its N questions numbered in one prompt and expects ``answer 1; answer 2; ...``; its
ground truth is one alias list per question, in order. Rows are verl RL parquet rows (one per composite task)::

    {"id": "train_0", "data_source": "hotpotqa" | "mix", "ability": "multi-objective-qa",
     "prompt": [{"role": "user", "content": ...}],
     "reward_model": {"style": "rule", "ground_truth": [[aliases of q1], [aliases of q2], ...]},
     "extra_info": {"index", "split", "objectives", "questions", "question_ids", "question_sources", "tags",
                    "max_turns"},
     "agent_name": ...}   # only when given

Guarantees: the same inputs and seed give the same rows; no question appears twice in a task or (by default)
in two tasks (questions are de-duplicated by normalised text across all sources first); train/test splits are
made per question by a hash of its normalised text (:func:`split_items`), so no question text is ever on both
sides, whatever the composition's N, count or seed.
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from verl_mem1.protocol import build_prompt_messages, get_tag_set
from verl_mem1.tasks.sources import QAItem

__all__ = [
    "ABILITY",
    "compose_tasks",
    "normalize_question",
    "split_items",
    "write_tasks_parquet",
]

ABILITY = "multi-objective-qa"
MIX_SOURCE = "mix"


def normalize_question(text: str) -> str:
    """Key under which two questions count as the same: NFKC, case-folded, punctuation dropped, whitespace
    collapsed (so NQ-open's "who won x" and Search-R1's "who won x?" are one question)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def _unit_hash(text: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}\x00{normalize_question(text)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_items(items: Sequence[QAItem], test_fraction: float, seed: int = 0) -> tuple[list[QAItem], list[QAItem]]:
    """Split questions into (train, test) by a seeded hash of their normalised text, keeping input order.

    Not positional: a question's side depends only on its text and ``seed``, so it is the same in every source,
    every run and every composition, equal texts always land together, and raising ``test_fraction`` only moves
    questions from train to test. Keep ``seed`` fixed across runs whose splits must not overlap.
    """
    if isinstance(test_fraction, bool) or not 0.0 <= float(test_fraction) <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction!r}")
    train: list[QAItem] = []
    test: list[QAItem] = []
    for item in items:
        (test if _unit_hash(item.question, seed) < test_fraction else train).append(item)
    return train, test


def _dedupe(pools: Sequence[Sequence[QAItem]]) -> list[list[QAItem]]:
    """Drop questions whose normalised text was seen before (in any pool); aliases of duplicates are merged
    into the first occurrence, since every one of them is a gold answer to the same question."""
    first: dict[str, tuple[int, int]] = {}
    out: list[list[QAItem]] = []
    for p, pool in enumerate(pools):
        kept: list[QAItem] = []
        for item in pool:
            key = normalize_question(item.question)
            if key not in first:
                first[key] = (p, len(kept))
                kept.append(item)
                continue
            fp, fi = first[key]
            target = out[fp][fi] if fp < p else kept[fi]
            merged = target.answers + [a for a in item.answers if a not in target.answers]
            if merged != target.answers:
                new = QAItem(target.id, target.question, merged, target.source)
                if fp < p:
                    out[fp][fi] = new
                else:
                    kept[fi] = new
        out.append(kept)
    return out


def _pool_name(pool: Sequence[QAItem], index: int) -> str:
    names = sorted({item.source for item in pool})
    return "+".join(names) if names else f"source #{index + 1}"


def _allocate(capacities: list[int], count: int | None) -> list[int] | None:
    """Tasks per pool: all it can make when count is None, else as even a split of ``count`` as capacities
    allow (a small pool gives what it has and the others make up the rest). None if count exceeds capacity."""
    if count is None:
        return list(capacities)
    if count > sum(capacities):
        return None
    shares = [0] * len(capacities)
    left = count
    open_pools = [i for i, c in enumerate(capacities) if c > 0]
    while left:
        even, extra = divmod(left, len(open_pools))
        for rank, i in enumerate(list(open_pools)):
            give = min(even + (1 if rank < extra else 0), capacities[i] - shares[i])
            shares[i] += give
            left -= give
        open_pools = [i for i in open_pools if shares[i] < capacities[i]]
    return shares


def _interleave(groups: Sequence[Sequence[Any]]) -> list[Any]:
    """Round-robin: first of each group, then second of each, ..."""
    out: list[Any] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def _capacity_error(names: list[str], sizes: list[int], objectives: int, count: int | None, mix: bool) -> str:
    listing = ", ".join(f"{name}: {size} questions" for name, size in zip(names, sizes, strict=True))
    if count is None:
        return f"not enough questions for one task of {objectives} objectives ({listing})"
    if len(names) == 1:
        return (
            f"source {names[0]} has {sizes[0]} questions; {count} tasks of {objectives} objectives need "
            f"{count * objectives}"
        )
    most = sum(sizes) // objectives if mix else sum(s // objectives for s in sizes)
    return (
        f"{count} tasks of {objectives} objectives need {count * objectives} questions; "
        f"the sources ({listing}) make at most {most} tasks"
    )


PASS_RESHUFFLES = 100  # a pass that would repeat an earlier pass's question group is reshuffled, this many times


def compose_tasks(
    pools: list[list[QAItem]],
    *,
    objectives: int,
    count: int | None,
    seed: int,
    mix_sources: bool = False,
    tags: str = "paper",
    max_turns: int | None = None,
    split: str = "train",
    agent_name: str | None = None,
    passes: int = 1,
) -> list[dict[str, Any]]:
    """Compose ``count`` tasks of ``objectives`` questions each (as many as possible when ``count`` is None).

    Each question is used at most once, or at most ``passes`` times: every pass shuffles the pool afresh (and
    drops its last ``len(pool) % objectives`` questions; a shuffle that repeats an earlier pass's group is redrawn),
    so a question meets other partners in each pass and never appears twice in one task. More passes make more
    tasks from a small pool (e.g. 300 held-out 2-objective tasks from 300 questions); their scores are then not
    independent across tasks that share a question (``mem1 compare`` counts that in its standard error). By default
    every task draws from one pool (one source) and tasks of different pools alternate; ``count`` is shared as
    evenly as the pools allow. With ``mix_sources`` the pools are interleaved before chunking, so each task mixes
    sources (question order within a task is shuffled).
    ``agent_name`` adds verl's per-row ``agent_name`` column (which agent loop runs the task).
    """
    if isinstance(objectives, bool) or not isinstance(objectives, int) or objectives < 1:
        raise ValueError(f"objectives must be a positive int, got {objectives!r}")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be a positive int or None, got {count!r}")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes must be a positive int, got {passes!r}")
    if passes > 1 and mix_sources:
        raise ValueError("passes > 1 needs tasks from one source each (mix_sources could repeat a question in a task)")
    tag_set = get_tag_set(tags)
    if not pools:
        raise ValueError("no sources given")
    for i, pool in enumerate(pools):
        if not pool:
            raise ValueError(f"source #{i + 1} has no questions")
    names = [_pool_name(pool, i) for i, pool in enumerate(pools)]
    raw_sizes = [len(pool) for pool in pools]
    pools = _dedupe(pools)
    sizes = [len(pool) for pool in pools]
    rng = random.Random(seed)
    shuffled = []
    for pool in pools:
        stream: list[QAItem] = []
        seen: set[frozenset[str]] = set()  # the question groups of earlier passes: a later pass must not repeat one
        for _ in range(passes):
            for _attempt in range(PASS_RESHUFFLES):
                order = list(pool)
                rng.shuffle(order)
                if passes > 1:
                    order = order[: len(order) - len(order) % objectives]
                groups = {
                    frozenset(item.id for item in order[i : i + objectives]) for i in range(0, len(order), objectives)
                }
                if objectives == 1 or not groups & seen:
                    break
            seen |= groups
            stream += order
        shuffled.append(stream)
    if passes > 1:
        sizes = [len(stream) for stream in shuffled]

    groups: list[list[QAItem]]
    if mix_sources:
        if count is None:
            count = sum(sizes) // objectives
        if count < 1 or count * objectives > sum(sizes):
            raise ValueError(_capacity_error(names, sizes, objectives, count or None, True))
        stream = _interleave(shuffled)[: count * objectives]
        groups = [stream[i : i + objectives] for i in range(0, len(stream), objectives)]
        for group in groups:
            rng.shuffle(group)
    else:
        capacities = [size // objectives for size in sizes]
        for name, raw, size, cap in zip(names, raw_sizes, sizes, capacities, strict=True):
            if cap == 0:
                dropped = f" ({raw - size} duplicate questions removed)" if raw > size else ""
                raise ValueError(f"source {name} has {size} questions{dropped}, fewer than {objectives} objectives")
        shares = _allocate(capacities, count)
        if shares is None:
            raise ValueError(_capacity_error(names, sizes, objectives, count, False))
        per_pool = [
            [pool[i * objectives : (i + 1) * objectives] for i in range(share)]
            for pool, share in zip(shuffled, shares, strict=True)
        ]
        groups = _interleave(per_pool)

    rows = []
    for index, group in enumerate(groups):
        questions = [item.question for item in group]
        sources = [item.source for item in group]
        row: dict[str, Any] = {
            "id": f"{split}_{index}",
            "data_source": sources[0] if len(set(sources)) == 1 else MIX_SOURCE,
            "prompt": build_prompt_messages(questions, tag_set, max_turns=max_turns),
            "ability": ABILITY,
            "reward_model": {"style": "rule", "ground_truth": [list(item.answers) for item in group]},
            "extra_info": {
                "index": index,
                "split": split,
                "objectives": objectives,
                "questions": questions,
                "question_ids": [item.id for item in group],
                "question_sources": sources,
                "tags": tag_set.name,
                "max_turns": max_turns,
            },
        }
        if agent_name is not None:
            row["agent_name"] = agent_name
        rows.append(row)
    return rows


def write_tasks_parquet(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as parquet with nested types preserved (ground truth stays a list of lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(rows)
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
