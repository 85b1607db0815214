"""A markdown table and PNG plots of accuracy and peak tokens against the number of objectives (``mem1 report``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def load_points(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One point per (run, number of objectives) from each run's ``metrics.json``."""
    points = []
    for run in run_dirs:
        path = Path(run) / "metrics.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {run} a `mem1 eval` output directory?")
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
            for objectives, summary in metrics["by_objectives"].items():
                points.append(
                    {"run": str(run), "policy": metrics["context_policy"], "objectives": int(objectives), **summary}
                )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a metrics.json written by `mem1 eval` ({exc!r})") from exc
    if not points:
        raise ValueError("no evaluation results in the given directories")
    return sorted(points, key=lambda p: (p["objectives"], p["policy"]))


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _accuracy(point: dict[str, Any]) -> float:
    """EM for QA runs, the environment's mean reward for runs it scores (WebShop)."""
    return point["em"] if point.get("em") is not None else point.get("reward") or 0.0


def markdown_table(points: Sequence[dict[str, Any]]) -> str:
    header = (
        "| objectives | context | episodes | EM | F1 | reward | peak tokens | max peak | dependency | time p50 (s) "
        "| turns | invalid rate |"
    )
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for p in points:
        lines.append(
            f"| {p['objectives']} | {p['policy']} | {p['episodes']} | {_num(p.get('em'))} | {_num(p.get('f1'))} "
            f"| {_num(p.get('reward'))} "
            f"| {p['peak_tokens']:.0f} | {p['peak_tokens_max']} | {p['dependency']:.3g} "
            f"| {p['inference_time_s']['p50']:.2f} | {p['turns']:.1f} | {p['invalid_action_rate']:.2f} |"
        )
    return "\n".join(lines)


def plot(points: Sequence[dict[str, Any]], out_png: str | Path) -> Path:
    """Two panels, one line per context policy: EM and peak tokens against objectives (log2 x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = sorted({p["policy"] for p in points}, key=lambda s: (s != "mem1", s))
    fig, (acc, mem) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    styles = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-.")]  # policies with the same layout still show
    for i, policy in enumerate(policies):
        series = sorted((p for p in points if p["policy"] == policy), key=lambda p: p["objectives"])
        xs = [p["objectives"] for p in series]
        marker, line = styles[i % len(styles)]
        style = {"marker": marker, "linestyle": line, "label": policy, "markersize": 8 - 1.5 * (i % len(styles))}
        acc.plot(xs, [_accuracy(p) for p in series], **style)
        mem.plot(xs, [p["peak_tokens"] for p in series], **style)
    acc.set_ylim(0, max(1.0, 1.1 * max(_accuracy(p) for p in points)))
    mem.set_ylim(bottom=0)
    scored = "exact match (sum over objectives)" if any(p.get("em") is not None for p in points) else "mean reward"
    for ax, ylabel in ((acc, scored), (mem, "peak tokens (mean per episode)")):
        ax.set_xscale("log", base=2)
        xs = sorted({p["objectives"] for p in points})
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("objectives per task")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(title="context")
    acc.set_title("Accuracy")
    mem.set_title("Memory")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path) -> tuple[str, Path]:
    points = load_points(run_dirs)
    table = markdown_table(points)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot(points, out / "report.png")
    (out / "report.md").write_text(
        "# MEM1 evaluation\n\n" + table + "\n\n![accuracy and peak tokens](report.png)\n", encoding="utf-8"
    )
    return table, png
