"""`mem1 train` with no arguments but a step count: verl's own trainer (main_ppo, the CPU platform) on this machine,
with the tiny model, tasks and the bundled retriever that `mem1 train` prepares (verl_mem1/single_machine.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import metrics_by_step

# 150-185 s on a 2-core Xeon (Ice Lake) from a cold start (the tiny model, 600 tasks, the BM25 index, Ray, one step
# and a checkpoint); ~1.6x that on a 2-core AMD EPYC; the limit keeps 3x over the slower
RUN_TIMEOUT_S = 900


@pytest.mark.e2e
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_mem1_train_runs_verls_trainer_on_what_it_prepares_on_cpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_FILE_LOGGER_PATH")}
    command = [sys.executable, "-m", "verl_mem1.cli", "train", "trainer.total_training_steps=1", "trainer.save_freq=1"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    log = result.stdout + result.stderr
    (tmp_path / "train.log").write_text(log)
    assert result.returncode == 0, log[-6000:]

    run = tmp_path / "outputs" / "train" / "mem1" / "tiny"  # the tiny experiment's trainer.default_local_dir
    assert (run / "tiny-model" / "config.json").is_file() and (run / "data" / "train.parquet").is_file()
    assert "serving the bundled HotpotQA BM25 retriever on http://127.0.0.1:" in log
    steps = metrics_by_step(log)  # verl's console logger
    assert sorted(steps) == [1]
    assert steps[1]["training/rollout_probs_diff_max"] <= 1e-8  # the fp32 MEM1 invariant, measured by verl
    assert steps[1]["num_turns/mean"] >= 1 and steps[1]["response_length/mean"] > 0
    assert (run / "global_step_1" / "actor" / "model_world_size_1_rank_0.pt").is_file()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged] == [1] and "critic/score/mean" in logged[0]["data"]

    from verl_mem1.cli import main

    assert main(["curve", str(run)]) == 0 and (run / "learning_curve.png").stat().st_size > 10_000
