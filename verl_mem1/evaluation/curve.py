"""The learning curve of a training run: per step metrics as JSON and CSV, and a PNG a user can look at.

``mem1 curve RUN_DIR`` draws it from verl's file logger (``metrics.jsonl``, which ``mem1 train`` and ``make learn``
write into the run folder), at any point of the run. Held-out scores are compared with :func:`paired_difference`
(``mem1 compare`` of two ``mem1 eval`` folders): the same tasks are evaluated before and after, so the standard error
of the per-task difference is the honest yardstick for "better".
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CURVE_FILE = "learning_curve"
VERL_METRICS_FILE = "metrics.jsonl"  # verl's file logger (trainer.logger=[...,file], VERL_FILE_LOGGER_PATH)
MOVING_WINDOW = 5
# verl's metric names for what the curve's columns call otherwise
VERL_NAMES = {
    "critic/score/mean": "reward/mean",
    "timing_s/gen": "timing_s/rollout",
    "timing_s/testing": "timing_s/validation",
}
# (column, what it is) in the CSV, in order; a run without a metric leaves its cells empty
COLUMNS: tuple[tuple[str, str], ...] = (
    ("training/global_step", "optimizer step"),
    ("reward/mean", "train reward, mean over the step's episodes"),
    ("reward/moving_mean", "train reward, mean of the last MOVING_WINDOW steps"),
    ("val/reward", "held-out reward (verl's validation, val-core/*/reward/mean@N, averaged over data sources)"),
    ("num_turns/mean", "turns per episode"),
    ("response_length/mean", "packed response tokens per episode"),
    ("timing_s/rollout", "rollout seconds"),
    ("timing_s/old_log_prob", "old-policy log-prob seconds"),
    ("timing_s/ref", "reference-policy log-prob seconds"),
    ("timing_s/update_actor", "policy update seconds"),
    ("timing_s/validation", "held-out evaluation seconds"),
    ("timing_s/step", "seconds of the whole step"),
    ("training/rollout_probs_diff_max", "max |training - rollout probability| (verl's rollout correction)"),
    ("actor/ppo_kl", "PPO KL to the rollout policy"),
    ("actor/kl_loss", "KL to the reference policy"),
)
VAL_REWARD = re.compile(r"^val-core/.+/reward/mean@\d+$")


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n)); 0 for fewer than two values."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def paired_difference(before: Mapping[str, float], after: Mapping[str, float]) -> tuple[float, float, int]:
    """Mean and standard error of ``after[id] - before[id]`` over the task ids both have.

    Returns:
        ``(mean difference, its standard error, number of paired tasks)``.
    """
    ids = sorted(set(before) & set(after))
    if not ids:
        raise ValueError("no task is scored in both evaluations")
    diffs = [float(after[i]) - float(before[i]) for i in ids]
    return sum(diffs) / len(diffs), standard_error(diffs), len(diffs)


def eval_scores(eval_dir: str | Path, key: str = "em") -> dict[str, float]:
    """Each task's ``key`` score in a ``mem1 eval`` folder's ``metrics.json``."""
    path = Path(eval_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{eval_dir} is not a `mem1 eval` folder: {path} is missing")
    rows = json.loads(path.read_text(encoding="utf-8"))["episodes"]
    return {str(row["id"]): float(row[key] or 0.0) for row in rows}


def clustered_standard_error(diffs: Mapping[str, float], questions: Mapping[str, Sequence[str]]) -> float:
    """Standard error of the mean of per-task ``diffs`` when tasks may share questions (``mem1 compose --passes``).

    Two tasks that ask the same question are not independent, so their covariance counts: the variance of the mean
    is ``(sum_t e_t^2 + sum over task pairs sharing a question of e_t e_t') / T^2`` (residuals ``e_t``; multi-way
    clustering by question), times ``T / (T - 1)``. Without shared questions it is :func:`standard_error`'s value.
    A task missing from ``questions`` shares nothing."""
    ids = list(diffs)
    n = len(ids)
    if n < 2:
        return 0.0
    mean = sum(diffs.values()) / n
    residual = {t: float(diffs[t]) - mean for t in ids}
    by_question: dict[str, float] = {}
    extra = 0.0  # a task's own square is summed once per question it asks: keep one
    for t in ids:
        asked = set(questions.get(t, ())) or {f"task:{t}"}
        for q in asked:
            by_question[q] = by_question.get(q, 0.0) + residual[t]
        extra += (len(asked) - 1) * residual[t] ** 2
    variance = (sum(v * v for v in by_question.values()) - extra) / n**2 * n / (n - 1)
    return math.sqrt(max(variance, 0.0))


def eval_questions(eval_dir: str | Path) -> dict[str, list[str]]:
    """Each task's questions in a ``mem1 eval`` folder's ``episodes.jsonl`` (empty when the file is absent)."""
    from verl_mem1.jsonl import iter_json_objects

    path = Path(eval_dir) / "episodes.jsonl"
    if not path.is_file():
        return {}
    return {str(row["id"]): list(row.get("questions") or []) for _, row in iter_json_objects(path)}


def compare_evaluations(before_dir: str | Path, after_dir: str | Path, keys: Sequence[str] = ("em", "f1")) -> str:
    """Markdown: two ``mem1 eval`` folders of the same tasks compared task by task: each score's means, the paired
    change ± its standard error (and in SE units), and how many tasks it gained and lost. The SE counts tasks that
    share a question as correlated (:func:`clustered_standard_error`, questions from ``episodes.jsonl``).

    Raises ``ValueError`` when the folders share no task, or when one holds a task the other lacks (a paired
    comparison of different task sets would hide which model was asked what)."""
    questions = eval_questions(before_dir)
    lines = ["| score | tasks | before | after | change (paired) ± SE | SE units | gained | lost |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for key in keys:
        before, after = eval_scores(before_dir, key), eval_scores(after_dir, key)
        if set(before) != set(after):
            only = sorted(set(before) ^ set(after))
            raise ValueError(f"the two evaluations did not play the same tasks ({len(only)} differ, e.g. {only[0]!r})")
        mean, _, n = paired_difference(before, after)
        se = clustered_standard_error({t: after[t] - before[t] for t in before}, questions)
        gained = sum(after[i] > before[i] for i in before)
        lost = sum(after[i] < before[i] for i in before)
        units = f"{mean / se:+.1f}" if se > 0 else "-"
        lines.append(
            f"| {key} | {n} | {sum(before.values()) / n:.3f} | {sum(after.values()) / n:.3f} | {mean:+.3f} ± {se:.3f} "
            f"| {units} | {gained} | {lost} |"
        )
    counts: dict[str, int] = {}
    for asked in questions.values():
        for q in set(asked):
            counts[q] = counts.get(q, 0) + 1
    shared = sum(any(counts[q] > 1 for q in set(asked)) for asked in questions.values())
    if shared:
        lines.append(f"\n{shared} tasks share a question with another task: the SE counts their covariance.")
    return "\n".join(lines)


def with_moving_mean(rows: Sequence[Mapping[str, Any]], window: int = MOVING_WINDOW) -> list[dict[str, Any]]:
    """The rows with ``reward/moving_mean``: the mean train reward of each step and the ``window - 1`` before it
    (the per-step mean over a few tasks is noisy; its trend is what a rising curve means)."""
    out, recent = [], []
    for row in rows:
        row = dict(row)
        if row.get("reward/mean") is not None:
            recent = [*recent, float(row["reward/mean"])][-window:]
            row["reward/moving_mean"] = sum(recent) / len(recent)
        out.append(row)
    return out


def read_verl_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of a verl trainer run's ``metrics.jsonl`` (verl's file logger: one ``{"step", "data"}`` per line),
    renamed to the curve's columns where verl names them otherwise (:data:`VERL_NAMES`), one row per step."""
    path = Path(run_dir) / VERL_METRICS_FILE
    if not path.is_file():
        return []
    steps: dict[int, dict[str, float]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            step, data = int(entry["step"]), dict(entry["data"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a verl file-logger line ({exc})") from None
        row = steps.setdefault(step, {"training/global_step": float(step)})
        for key, value in data.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                row[VERL_NAMES.get(key, key)] = float(value)
    for row in steps.values():  # held-out reward: the mean over the step's data sources
        held_out = [value for key, value in row.items() if VAL_REWARD.match(key)]
        if held_out:
            row["val/reward"] = sum(held_out) / len(held_out)
    return [steps[k] for k in sorted(steps)]


def write_learning_curve(rows: Sequence[Mapping[str, Any]], run_dir: str | Path, *, title: str = "") -> list[Path]:
    """Write ``learning_curve.json`` (every metric), ``.csv`` (:data:`COLUMNS`) and ``.png`` into ``run_dir``."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = with_moving_mean(rows)
    paths = [out / f"{CURVE_FILE}.json", out / f"{CURVE_FILE}.csv", out / f"{CURVE_FILE}.png"]
    paths[0].write_text(json.dumps({"title": title, "steps": rows}, indent=1, sort_keys=True), encoding="utf-8")
    with paths[1].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([name for name, _ in COLUMNS])
        for row in rows:
            writer.writerow(["" if row.get(name) is None else f"{float(row[name]):.6g}" for name, _ in COLUMNS])
    plot_learning_curve(rows, paths[2], title=title)
    return paths


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(float(r["training/global_step"]), float(r[key])) for r in rows if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_learning_curve(rows: Sequence[Mapping[str, Any]], out_png: str | Path, *, title: str = "") -> Path:
    """Four panels against the step: rewards (train and held-out), turns, packed response tokens, seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    (score, turns), (tokens, seconds) = axes
    score.plot(*_series(rows, "reward/mean"), marker=".", alpha=0.5, label="train reward")
    score.plot(*_series(rows, "reward/moving_mean"), label=f"train reward, last {MOVING_WINDOW} steps")
    score.plot(*_series(rows, "val/reward"), marker="o", label="held-out reward (verl validation)")
    score.set_ylabel("reward")
    turns.plot(*_series(rows, "num_turns/mean"), marker=".")
    turns.set_ylabel("turns per episode (mean)")
    tokens.plot(*_series(rows, "response_length/mean"), marker=".")
    tokens.set_ylabel("packed response tokens (mean)")
    for key, label in (
        ("timing_s/rollout", "rollout"),
        ("timing_s/old_log_prob", "old log-probs"),
        ("timing_s/ref", "reference"),
        ("timing_s/update_actor", "update"),
        ("timing_s/validation", "held-out eval"),
    ):
        seconds.plot(*_series(rows, key), marker=".", label=label)
    seconds.set_ylabel("seconds")
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
