"""``mem1 eval --env webshop`` and ``mem1 webshop-tasks`` end to end on the tiny model and the WebShop server."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from verl_mem1.cli import main
from verl_mem1.evaluation.report import write_report


def _eval(out, *extra) -> int:
    return main(["eval", "--env", "webshop", "--max-turns", "3", "--max-new-tokens", "8", "--out", str(out), *extra])


@pytest.mark.e2e
def test_eval_on_webshop_writes_the_qa_metrics(tiny_model_dir, webshop_url, tmp_path, capsys):
    runs = []
    for policy in ("mem1", "full"):
        out = tmp_path / policy
        code = _eval(
            out, "--model", str(tiny_model_dir), "--webshop", webshop_url, "--goals", "3:6", "--context", policy
        )
        assert code == 0
        runs.append(out)
    printed = capsys.readouterr().out
    assert "3 episodes, context mem1: reward 0.000, success 0.000, peak tokens" in printed
    metrics = json.loads((tmp_path / "mem1" / "metrics.json").read_text())
    s = metrics["summary"]
    assert metrics["tag_set"] == "webshop" and s["episodes"] == 3 and s["turns"] == 3.0
    assert s["reward"] == 0.0 and s["success_rate"] == 0.0 and s["em"] is None  # a random model buys nothing
    assert s["peak_tokens"] > 0 and s["dependency"] > 0 and s["inference_time_s"]["p50"] > 0
    episodes = [json.loads(line) for line in (tmp_path / "mem1" / "episodes.jsonl").read_text().splitlines()]
    assert sorted(e["id"] for e in episodes) == ["webshop-3", "webshop-4", "webshop-5"]  # in finishing order
    assert all(e["reward"] == 0.0 and e["tag_set"] == "webshop" for e in episodes)
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())["summary"]
    assert full["peak_tokens"] > s["peak_tokens"], "full context grows with every page; MEM1 keeps the last"
    table, png = write_report(runs, tmp_path / "report")
    assert "| 1 | mem1 | 3 | — | — | 0.000 |" in table and png.stat().st_size > 10_000


@pytest.mark.e2e
def test_webshop_tasks_file_round_trips_through_eval(tiny_model_dir, webshop_shop, webshop_url, tmp_path, capsys):
    tasks = tmp_path / "test.parquet"
    assert main(["webshop-tasks", "--goals", "7:9", "--split", "test", "--max-turns", "3", "--out", str(tasks)]) == 0
    rows = pd.read_parquet(tasks).to_dict(orient="records")
    assert [r["extra_info"]["goal_index"] for r in rows] == [7, 8] and {r["data_source"] for r in rows} == {"webshop"}
    assert rows[0]["reward_model"]["ground_truth"] == webshop_shop.catalog.goals[7]["asin"]
    assert webshop_shop.catalog.goals[7]["instruction_text"] in rows[0]["prompt"][0]["content"]
    out = tmp_path / "run"
    assert _eval(out, "--model", str(tiny_model_dir), "--webshop", webshop_url, "--tasks", str(tasks)) == 0
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [e["termination"] for e in episodes] == ["max_turns", "max_turns"], "sessions opened on the right goals"


def test_webshop_options_fail_at_start_up(tiny_model_dir, webshop_url, tmp_path, capsys):
    model = ["--model", str(tiny_model_dir), "--webshop", webshop_url]
    assert _eval(tmp_path / "a", *model, "--goals", "0:99999") == 2
    assert "outside the catalog's goals" in capsys.readouterr().err
    assert _eval(tmp_path / "b", *model, "--tags", "paper") == 2
    assert "does not fit mem1.env=webshop" in capsys.readouterr().err
    assert _eval(tmp_path / "c", "--model", str(tiny_model_dir), "--webshop", "http://127.0.0.1:9") == 2
    assert "unreachable" in capsys.readouterr().err
    assert main(["webshop-tasks", "--goals", "5:2", "--out", str(tmp_path / "x.parquet")]) == 2
    assert "outside the catalog's goals" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model_dir), "--out", str(tmp_path / "d")]) == 2
    assert "--env retrieval needs --tasks and --retriever" in capsys.readouterr().err
