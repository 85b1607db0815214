"""``mem1 report`` makes the runs' episode page and links it; a run it cannot decode leaves the report standing."""

from __future__ import annotations

import json

from verl_mem1.cli import main


def test_report_links_the_episode_page(eval_runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(eval_runs["mem1"]), str(eval_runs["full"]), "--out", str(out)]) == 0
    assert f"episode page: {out / 'view' / 'index.html'}" in capsys.readouterr().out
    assert "[view/index.html](view/index.html)" in (out / "report.md").read_text()
    page = (out / "view" / "index.html").read_text()
    assert page.count('"policy": "mem1"') == page.count('"policy": "full"') == 2


def test_a_run_without_a_model_gets_its_report_and_no_page(eval_runs, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "episodes.jsonl").write_text((eval_runs["mem1"] / "episodes.jsonl").read_text())
    metrics = json.loads((eval_runs["mem1"] / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "model": ""}))
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no episode page: " in printed and "no model is recorded" in printed
    assert (out / "report.md").exists() and not (out / "view").exists()
    assert "view/index.html" not in (out / "report.md").read_text()
