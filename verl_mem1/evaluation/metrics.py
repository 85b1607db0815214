"""Per-episode accuracy and efficiency metrics, and their aggregation.

Token counts come from the episode records, i.e. from the model's own tokenizer (the MEM1 reference counts
with a GPT tokenizer and records no time):

- peak tokens: max over turns of the context length plus the tokens generated that turn — the memory a
  KV cache must hold at the worst moment of the episode;
- dependency: Σ over generated tokens of the number of tokens each one attends to (its turn's context plus
  the tokens generated before it in that turn) — the attention work of the episode;
- inference time: the wall time of the episode.

Accuracy is EM/F1 of the final answer for QA, and the environment's reward for environments that score
episodes themselves (WebShop, whose tasks carry no answers): there ``em``/``f1`` are None, ``reward`` is
WebShop's score and ``success`` whether it is 1.0 (WebShop's success rate).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from verl_mem1.records import EpisodeRecord
from verl_mem1.tasks.rewards import score_answer


def dependency(record: EpisodeRecord) -> int:
    """Σ_t Σ_{j < g_t} (c_t + j) with c_t the context length and g_t the tokens generated at turn t."""
    total = 0
    for turn in record.turns:
        c, g = len(turn.context_ids), len(turn.generated_ids)
        total += g * c + g * (g - 1) // 2
    return total


def episode_metrics(record: EpisodeRecord, *, reduce: str = "sum") -> dict[str, Any]:
    """Accuracy (EM and F1 over objectives, or the environment's reward) and efficiency of one episode."""
    answers = bool(record.ground_truth)
    score = score_answer(record.final_answer, record.ground_truth, reduce=reduce) if answers else None
    turns = len(record.turns)
    invalid = record.invalid_turns
    return {
        "id": record.id,
        "num_objectives": len(record.ground_truth) if answers else len(record.questions),
        "em": score.em if score else None,
        "f1": score.f1 if score else None,
        "reward": record.reward,
        "success": None if answers or record.reward is None else record.reward >= 1.0,
        "answered": record.final_answer is not None if answers else record.termination == "done",
        "termination": record.termination,
        "turns": turns,
        "invalid_actions": invalid,
        "invalid_action_rate": invalid / turns if turns else 0.0,
        "peak_tokens": record.peak_tokens,
        "dependency": dependency(record),
        "generated_tokens": sum(len(t.generated_ids) for t in record.turns),
        "inference_time_s": record.wall_time_s,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of an empty sequence")
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means of the per-episode metrics, plus max peak tokens and inference-time percentiles."""
    if not rows:
        raise ValueError("no episodes to summarize")
    n = len(rows)

    def mean(key: str) -> float | None:
        """Mean over the episodes that have the metric (None when none has it)."""
        values = [float(r[key]) for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    times = [r["inference_time_s"] for r in rows]
    turns = sum(r["turns"] for r in rows)
    return {
        "episodes": n,
        "em": mean("em"),
        "f1": mean("f1"),
        "reward": mean("reward"),
        "success_rate": mean("success"),
        "answered_rate": mean("answered"),
        "turns": mean("turns"),
        "invalid_action_rate": sum(r["invalid_actions"] for r in rows) / turns if turns else 0.0,
        "peak_tokens": mean("peak_tokens"),
        "peak_tokens_max": max(r["peak_tokens"] for r in rows),
        "dependency": mean("dependency"),
        "generated_tokens": mean("generated_tokens"),
        "inference_time_s": {
            "mean": sum(times) / n,
            "p50": percentile(times, 50),
            "p90": percentile(times, 90),
            "p99": percentile(times, 99),
        },
        "terminations": dict(Counter(r["termination"] for r in rows)),
    }


def summarize_by_objectives(rows: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """One summary per number of objectives (a task file may mix them)."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(int(row["num_objectives"]), []).append(row)
    return {k: summarize(v) for k, v in sorted(groups.items())}
