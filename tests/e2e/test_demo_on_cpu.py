"""``mem1 demo`` on a small budget: mem1's context stays flat, full's grows; the objectives report is written."""

from __future__ import annotations

import shutil

import pytest

from verl_mem1.demo import run_demo
from verl_mem1.evaluation.report import load_points

pytestmark = pytest.mark.e2e


def test_demo_runs_and_shows_flat_versus_growing(tmp_path, tiny_model_dir, capsys):
    shutil.copytree(tiny_model_dir, tmp_path / "tiny-model")  # reuse the session's model
    results = run_demo(
        tmp_path, num_questions=2, max_turns=4, max_new_tokens=12, objectives=(1, 4), tasks_per_point=1,
        sweep_max_new_tokens=8, webshop_goals="0:2", progress=False,
    )  # fmt: skip
    assert set(results) == {"mem1", "full", "window:2"}
    mem1 = [len(t.context_ids) for t in results["mem1"][0].turns]
    full = [len(t.context_ids) for t in results["full"][0].turns]
    assert full == sorted(full) and full[-1] > full[1] + 20, "full context grows every turn"
    assert max(mem1[1:]) - min(mem1[1:]) < 0.5 * (full[-1] - full[1]), "mem1 stays flat"
    out = capsys.readouterr().out
    assert "| turn | mem1 | full | window:2 |" in out and "meaningless" in out
    assert (tmp_path / "context_sizes.md").exists() and (tmp_path / "episodes_mem1.jsonl").exists()
    shop = {p: load_points([tmp_path / "webshop" / p])[0] for p in ("mem1", "full")}
    assert shop["full"]["peak_tokens"] > shop["mem1"]["peak_tokens"] and shop["mem1"]["reward"] == 0.0
    points = load_points(sorted((tmp_path / "eval").iterdir()))
    assert {(p["policy"], p["objectives"]) for p in points} == {
        (policy, n) for policy in ("mem1", "full", "window:1") for n in (1, 4)
    }
    peak = {(p["policy"], p["objectives"]): p["peak_tokens"] for p in points}
    assert peak[("full", 4)] > peak[("mem1", 4)], "more objectives, more turns: full grows past mem1"
    assert (tmp_path / "report" / "report.png").stat().st_size > 10_000
