"""``mem1 demo`` end to end with the tiny model: teacher episodes, SFT, the zero-shot/SFT x mem1/full grid."""

from __future__ import annotations

import json
import shutil

import pytest

from verl_mem1.demo import run_demo
from verl_mem1.evaluation.report import load_points

pytestmark = pytest.mark.e2e


def test_demo_fine_tunes_and_compares_models_and_policies(tmp_path, tiny_model_dir, capsys):
    shutil.copytree(tiny_model_dir, tmp_path / "tiny-model")  # reuse the session's model
    results = run_demo(
        tmp_path, model="tiny", teacher_tasks=16, sft_steps=2, objectives=(1, 2), tasks_per_point=2,
        max_new_tokens=8, webshop_goals="0:2", progress=False,
    )  # fmt: skip
    assert set(results) == {"zero-shot", "sft"}
    assert set(results["sft"]) == {(n, p) for n in (1, 2) for p in ("mem1", "full")}
    assert set(results["zero-shot"]) == {(2, "mem1")}  # the training point only
    kept = [json.loads(row) for row in (tmp_path / "oracle.jsonl").read_text().splitlines()]
    assert kept and all(row["reward"] == 1.0 for row in kept), "only right teacher episodes (EM averaged: both answers)"
    assert {1, 2} <= {len(row["questions"]) for row in kept} <= {1, 2, 3}  # 1- to 3-objective teacher episodes
    assert len(list((tmp_path / "tasks").glob("hotpotqa-train-*obj-16-seed*.parquet"))) == 3  # tasks of each count
    assert all(len(row["turns"]) == len(row["questions"]) + 1 for row in kept)  # a search per question, the answer
    assert (tmp_path / "sft" / "global_step_2" / "huggingface" / "config.json").is_file()
    out = capsys.readouterr().out
    assert "| model | objectives | context | tasks | EM ± SE | EM vs zero-shot (paired ± SE) |" in out
    assert "| sft | 2 | full | 2 |" in out and "| turn | mem1 | full |" in out
    demo_md = (tmp_path / "demo.md").read_text()
    assert "| zero-shot | 2 | mem1 | 2 |" in demo_md
    sft_row = next(line for line in demo_md.splitlines() if line.startswith("| sft | 2 | mem1 |"))
    assert sft_row.split("|")[6].strip() != "-"  # the paired gain where both models played the same tasks
    points = load_points(sorted((tmp_path / "eval" / "sft").iterdir()))
    peak = {(p["policy"], p["objectives"]): p["peak_tokens"] for p in points}
    assert peak[("full", 2)] > peak[("mem1", 2)], "full context grows past mem1's"
    for label in ("zero-shot", "sft"):
        assert (tmp_path / "report" / label / "report.png").stat().st_size > 10_000
        assert "view/index.html" in (tmp_path / "report" / label / "report.md").read_text()  # the linked episode page
        assert (tmp_path / "report" / label / "view" / "index.html").stat().st_size > 10_000
    assert "report/sft/view/index.html" in demo_md
    shop = {p: load_points([tmp_path / "webshop" / p])[0] for p in ("mem1", "full")}
    assert shop["full"]["peak_tokens"] > shop["mem1"]["peak_tokens"]
