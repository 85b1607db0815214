"""The learning curve's files and statistics, re-derived by hand."""

from __future__ import annotations

import csv
import math
import statistics

import pytest

from verl_mem1.evaluation.curve import (
    COLUMNS,
    paired_difference,
    standard_error,
    write_learning_curve,
)


@pytest.mark.parametrize("values", [[0, 1, 1, 0, 1], [0.2, 0.4], [1.0] * 7, [3.5, -1.0, 2.25, 0.0]])
def test_standard_error_is_the_sample_sd_over_root_n(values):
    assert standard_error(values) == pytest.approx(statistics.stdev(values) / math.sqrt(len(values)))


def test_standard_error_of_fewer_than_two_values_is_zero():
    assert standard_error([]) == 0.0 and standard_error([0.7]) == 0.0


def test_paired_difference_pairs_by_task_id():
    before = {"a": 0.0, "b": 1.0, "c": 0.0, "d": 0.0, "only-before": 1.0}
    after = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0, "only-after": 0.0}
    mean, se, n = paired_difference(before, after)
    diffs = [1.0, 0.0, 1.0, 0.0]  # a, b, c, d
    assert n == 4
    assert mean == pytest.approx(0.5)
    assert se == pytest.approx(statistics.stdev(diffs) / 2)


def test_paired_difference_without_common_tasks_is_an_error():
    with pytest.raises(ValueError, match="no task"):
        paired_difference({"a": 1.0}, {"b": 1.0})


def _read_curve(run_dir):
    import json

    return json.loads((run_dir / "learning_curve.json").read_text())["steps"]


def test_write_learning_curve_round_trips_and_plots(tmp_path):
    rows = [
        {"training/global_step": 0.0, "val/reward": 0.1},
        {"training/global_step": 1.0, "reward/mean": 0.25, "timing_s/rollout": 10.0, "timing_s/update_actor": 5.0},
        {"training/global_step": 2.0, "reward/mean": 0.5, "val/reward": 0.2, "extra/metric": 7.0},
    ]
    paths = write_learning_curve(rows, tmp_path, title="test run")
    assert [p.name for p in paths] == ["learning_curve.json", "learning_curve.csv", "learning_curve.png"]
    written = _read_curve(tmp_path)
    assert [{k: v for k, v in r.items() if k != "reward/moving_mean"} for r in written] == rows, "every metric kept"
    assert [r.get("reward/moving_mean") for r in written] == [None, 0.25, 0.375]
    with paths[1].open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == [name for name, _ in COLUMNS]
    assert [r["reward/mean"] for r in table] == ["", "0.25", "0.5"]
    assert [r["val/reward"] for r in table] == ["0.1", "", "0.2"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[2].stat().st_size > 20_000


def test_mem1_curve_names_what_is_missing(tmp_path, capsys):
    from verl_mem1.cli import main

    assert main(["curve", str(tmp_path)]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


def _write_eval(folder, scores):
    """A `mem1 eval` folder's metrics.json with one row per task: {id: (em, f1)}."""
    import json

    folder.mkdir(parents=True)
    rows = [{"id": task, "em": em, "f1": f1} for task, (em, f1) in scores.items()]
    (folder / "metrics.json").write_text(json.dumps({"summary": {}, "episodes": rows}))
    return folder


def test_compare_evaluations_pairs_tasks_and_counts_gains_and_losses(tmp_path):
    from verl_mem1.evaluation.curve import compare_evaluations

    before = _write_eval(tmp_path / "sft", {"a": (0.0, 0.2), "b": (1.0, 1.0), "c": (0.0, 0.0), "d": (2.0, 2.0)})
    after = _write_eval(tmp_path / "rl", {"d": (2.0, 2.0), "c": (1.0, 0.5), "b": (0.0, 0.4), "a": (1.0, 1.0)})
    em, f1 = compare_evaluations(before, after).splitlines()[2:]
    diffs = [1.0, -1.0, 1.0, 0.0]  # a, b, c, d: paired by id, not by row order
    se = statistics.stdev(diffs) / 2
    assert em == f"| em | 4 | 0.750 | 1.000 | +0.250 ± {se:.3f} | +{0.25 / se:.1f} | 2 | 1 |"
    assert f1.startswith("| f1 | 4 | 0.800 | 0.975 | +0.175 ±") and f1.endswith("| 2 | 1 |")


def test_compare_evaluations_refuses_different_task_sets(tmp_path):
    from verl_mem1.cli import main
    from verl_mem1.evaluation.curve import compare_evaluations

    before = _write_eval(tmp_path / "a", {"t1": (1.0, 1.0), "t2": (0.0, 0.0)})
    after = _write_eval(tmp_path / "b", {"t1": (1.0, 1.0), "t3": (0.0, 0.0)})
    with pytest.raises(ValueError, match="did not play the same tasks"):
        compare_evaluations(before, after)
    assert main(["compare", str(before), str(tmp_path / "missing")]) == 2
    assert main(["compare", str(before), str(before), "--out", str(tmp_path / "c.md")]) == 0
    assert "| em | 2 | 0.500 | 0.500 | +0.000 ± 0.000 | - | 0 | 0 |" in (tmp_path / "c.md").read_text()


def test_a_verl_runs_file_log_becomes_the_curve(tmp_path, capsys):
    """verl's file logger (one {"step", "data"} per line, numpy-free JSON): renamed where verl names a column
    otherwise, a step's lines merged, the moving mean over MOVING_WINDOW steps."""
    import json

    from verl_mem1.cli import main
    from verl_mem1.evaluation.curve import MOVING_WINDOW, read_verl_metrics

    scores = [0.1, 0.3, 0.2, 0.6, 0.4, 0.9, 0.5]
    lines = [
        {"step": i + 1, "data": {"critic/score/mean": v, "timing_s/gen": 30.0, "timing_s/ref": 4.0, "flag": True}}
        for i, v in enumerate(scores)
    ]
    lines.append({"step": 7, "data": {"timing_s/testing": 12.0, "val-core/a/reward/mean@1": 0.5}})
    lines.append({"step": 7, "data": {"val-core/b/reward/mean@1": 0.25, "val-aux/b/reward/std@1": 9.0}})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    rows = read_verl_metrics(tmp_path)
    assert [r["training/global_step"] for r in rows] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert rows[0]["reward/mean"] == 0.1 and rows[0]["timing_s/rollout"] == 30.0 and rows[0]["timing_s/ref"] == 4.0
    assert rows[6]["timing_s/validation"] == 12.0 and "flag" not in rows[0]
    assert rows[6]["val/reward"] == 0.375 and "val/reward" not in rows[5]  # the mean over the step's data sources
    assert main(["curve", str(tmp_path)]) == 0
    written = _read_curve(tmp_path)
    assert written[-1]["reward/moving_mean"] == pytest.approx(sum(scores[-MOVING_WINDOW:]) / MOVING_WINDOW)
    assert (tmp_path / "learning_curve.png").stat().st_size > 20_000
    (tmp_path / "learning_curve.json").unlink()
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "data": {}}\nnot json\n')
    assert main(["curve", str(tmp_path)]) == 2
    assert "metrics.jsonl:2: not a verl file-logger line" in capsys.readouterr().err


def test_clustered_standard_error_counts_tasks_that_share_a_question():
    from verl_mem1.evaluation.curve import clustered_standard_error

    diffs = {"t1": 1.0, "t2": 1.0, "t3": -2.0}
    alone = {"t1": ["a", "b"], "t2": ["c", "f"], "t3": ["d", "e"]}
    assert clustered_standard_error(diffs, alone) == pytest.approx(standard_error(list(diffs.values())))
    assert clustered_standard_error(diffs, {}) == pytest.approx(standard_error(list(diffs.values())))
    # t1 and t2 share question b: variance (sum e^2 + 2 e1 e2) / T^2 * T / (T - 1) = (6 + 2) / 9 * 3 / 2, by hand
    shared = {"t1": ["a", "b"], "t2": ["b", "c"], "t3": ["d", "e"]}
    assert clustered_standard_error(diffs, shared) == pytest.approx(math.sqrt(8 / 9 * 3 / 2))
    # opposite residuals on a shared question cancel: the SE shrinks below the plain one
    opposite = {"t1": 1.0, "t2": -1.0, "t3": 0.0}
    assert clustered_standard_error(opposite, shared) < standard_error(list(opposite.values()))


def test_compare_uses_the_clustered_se_when_the_eval_folders_say_which_questions_were_asked(tmp_path):
    import json

    from verl_mem1.evaluation.curve import compare_evaluations

    before = _write_eval(tmp_path / "sft", {"a": (0.0, 0.0), "b": (0.0, 0.0), "c": (1.0, 1.0)})
    after = _write_eval(tmp_path / "rl", {"a": (1.0, 1.0), "b": (1.0, 1.0), "c": (1.0, 1.0)})
    plain = compare_evaluations(before, after).splitlines()[2]
    asked = {"a": ["q1", "q2"], "b": ["q2", "q3"], "c": ["q4", "q5"]}
    rows = [{"id": task, "questions": questions} for task, questions in asked.items()]
    (before / "episodes.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    table = compare_evaluations(before, after)
    clustered = table.splitlines()[2]
    se = lambda row: float(row.split("±")[1].split("|")[0])  # noqa: E731
    assert se(clustered) > se(plain)  # a and b gained together on their shared question: less evidence than 2 tasks
    assert "2 tasks share a question with another task" in table
