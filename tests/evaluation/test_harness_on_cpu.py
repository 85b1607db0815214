"""``mem1 eval`` and ``mem1 report`` end to end on the tiny model and the HotpotQA retrieval server."""

from __future__ import annotations

import asyncio
import json

import pytest

from verl_mem1.cli import main
from verl_mem1.evaluation.harness import evaluate
from verl_mem1.evaluation.report import load_points, write_report
from verl_mem1.records import Task
from verl_mem1.rollout.backends.base import Generation
from verl_mem1.rollout.environment import RetrievalEnvironment
from verl_mem1.rollout.episode import EpisodeConfig

TASKS = [
    Task(id="t1", questions=["Who wrote Stardust?", "Where is Tulsa?"], ground_truth=[["Neil Gaiman"], ["Oklahoma"]]),
    Task(id="t2", questions=["Capital of France?"], ground_truth=[["Paris"]]),
]


class OracleBackend:
    """Answers every task correctly at once: checks the harness scores a right answer as right."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    async def generate(self, prompt_ids, sampling):
        text = self.tokenizer.decode(prompt_ids)
        answer = "Neil Gaiman; Oklahoma" if "Stardust" in text else "Paris"
        ids = self.tokenizer.encode(f"<IS>known</IS><answer>{answer}</answer>", add_special_tokens=False)
        return Generation(ids, [-0.5] * len(ids), "stop")


def _evaluate(backend, tokenizer, url, out, **config):
    async def go():
        env = RetrievalEnvironment(url)
        try:
            return await evaluate(TASKS, backend, env, tokenizer, EpisodeConfig(**config), out, progress=False)
        finally:
            await env.aclose()

    return asyncio.run(go())


def test_right_answers_score_and_metrics_file(tiny_backend, retrieval_url, tmp_path):
    tok = tiny_backend.tokenizer
    metrics = _evaluate(OracleBackend(tok), tok, retrieval_url, tmp_path / "oracle")
    assert metrics["summary"]["em"] == pytest.approx((2 + 1) / 2), "EM sums over objectives"
    assert metrics["by_objectives"]["2"]["em"] == 2.0 and metrics["by_objectives"]["1"]["em"] == 1.0
    written = json.loads((tmp_path / "oracle" / "metrics.json").read_text())
    assert written["summary"] == metrics["summary"]
    episodes = [json.loads(line) for line in (tmp_path / "oracle" / "episodes.jsonl").read_text().splitlines()]
    assert sorted(e["id"] for e in episodes) == ["t1", "t2"] and all(e["reward"] > 0 for e in episodes)


def test_tiny_model_eval_and_report(tiny_backend, retrieval_url, tmp_path):
    tok = tiny_backend.tokenizer
    runs = []
    for policy in ("mem1", "full"):
        out = tmp_path / policy
        metrics = _evaluate(tiny_backend, tok, retrieval_url, out, context=policy, max_turns=4, max_new_tokens=10)
        s = metrics["summary"]
        assert s["episodes"] == 2 and s["em"] == 0.0 and s["turns"] == 4.0 and s["invalid_action_rate"] > 0.5
        assert s["inference_time_s"]["p99"] >= s["inference_time_s"]["p50"] > 0
        runs.append(out)
    points = load_points(runs)
    assert {(p["policy"], p["objectives"]) for p in points} == {(a, b) for a in ("mem1", "full") for b in (1, 2)}
    full = {p["objectives"]: p for p in points if p["policy"] == "full"}
    mem1 = {p["objectives"]: p for p in points if p["policy"] == "mem1"}
    assert all(full[n]["peak_tokens"] > mem1[n]["peak_tokens"] for n in (1, 2))
    table, png = write_report(runs, tmp_path / "report")
    assert table.count("\n") == 1 + len(points) and "| 2 | mem1 |" in table
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main(["report", str(runs[0]), "--out", str(tmp_path / "r2")]) == 0


def test_report_errors_name_the_problem(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "metrics.json" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="not a metrics.json"):
        load_points([tmp_path / "bad"])


@pytest.mark.e2e
def test_eval_cli_against_a_served_model(tiny_backend, tiny_model_dir, retrieval_url, tmp_path, capsys):
    """--model takes the URL of an OpenAI-compatible server; tokens are counted with --tokenizer."""
    from env_servers.background import BackgroundServer
    from env_servers.llm.server import create_app
    from verl_mem1.rollout.backends.hf_local import HFLocalBackend

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"question": "Where is Tulsa?", "answer": "Oklahoma"}) + "\n")
    backend = HFLocalBackend(model=tiny_backend.model, tokenizer=tiny_backend.tokenizer)
    with BackgroundServer(create_app(backend, "tiny")) as llm:
        code = main(
            ["eval", "--model", llm.url, "--tokenizer", str(tiny_model_dir), "--tasks", str(tasks),
             "--retriever", retrieval_url, "--context", "window:1", "--max-turns", "2", "--max-new-tokens", "6",
             "--out", str(tmp_path / "run")]
        )  # fmt: skip
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["context_policy"] == "window:1" and metrics["summary"]["turns"] == 2
    assert "EM 0.000" in capsys.readouterr().out
    assert main(["eval", "--model", "http://127.0.0.1:9", "--tasks", str(tasks), "--retriever", retrieval_url,
                 "--out", str(tmp_path / "x")]) == 2  # fmt: skip
