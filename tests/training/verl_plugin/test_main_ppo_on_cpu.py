"""verl's own trainer, unmodified, on the MEM1 recipes on CPU (verl's ``main_ppo``: Ray, its agent-loop manager and
the MEM1 agent loop, the ``mem1_hf`` rollout with weight sync, TransferQueue in the v1 trainer, the MEM1 FSDP2 engines
on gloo, the optimizer, checkpoints and resume), the tiny model: ``mem1 train`` (``qa`` + the tiny experiment, on what
it prepares itself: the bundled retriever, composed tasks) on the v1 trainer with GRPO (and a resume), and ``python -m
verl_mem1.train --config-name webshop +platform=cpu`` against a real WebShop server on the legacy trainer with GAE
(the MEM1 critic engine). Read back from verl's own console metrics. One file, so pytest-xdist never runs two of these
at once: two Ray clusters training together passed 95% of a 24 GiB machine's memory and Ray killed their workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import metrics_by_step

REPO = Path(__file__).resolve().parents[3]
# One main_ppo run (Ray, its actors, two steps, a checkpoint; `mem1 train` also writes the tiny model, 600 tasks and
# the BM25 index first): 135-185 s on a 2-core Xeon (Ice Lake),
# ~1.6x that on a 2-core AMD EPYC; the limit keeps 3x over the slower. pytest's own limit for a test sits above the sum
# of its runs' limits, so a slow run fails with its own log tail.
RUN_TIMEOUT_S = 750
FIXTURES_S = 150  # the session fixtures a test may be the first to build (tiny model, corpus, servers, tasks)


@pytest.fixture(scope="module")
def webshop_tasks(tmp_path_factory):
    out = tmp_path_factory.mktemp("webshop-tasks")
    for goals, name in (("0:8", "train"), ("8:10", "test")):
        subprocess.run(
            [sys.executable, "-m", "verl_mem1.cli", "webshop-tasks", "--goals", goals, "--agent-name", "mem1_agent"]
            + ["--out", str(out / f"{name}.parquet")],
            check=True,
            capture_output=True,
        )
    return out


def webshop_main_ppo(tmp_path, tiny_model_dir, webshop_url, tasks, *overrides: str) -> str:
    """``python -m verl_mem1.train --config-name webshop +platform=cpu`` on the tiny model, as a cluster job names
    everything (model, task files, server URL, agent-loop file); its log."""
    command = [
        sys.executable,
        "-m",
        "verl_mem1.train",
        "--config-dir",
        str(REPO / "recipes"),
        "--config-name",
        "webshop",
        "+platform=cpu",
        f"actor_rollout_ref.model.path={tiny_model_dir}",
        f"data.train_files={tasks / 'train.parquet'}",
        f"data.val_files={tasks / 'test.parquet'}",
        f"mem1.webshop_url={webshop_url}",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={REPO / 'recipes' / 'agent_loops.yaml'}",
        f"trainer.default_local_dir={tmp_path / 'checkpoints'}",
        *overrides,
    ]
    return run_logged(command, tmp_path, {**os.environ, "VERL_PLATFORM": "cpu", "RAY_DEDUP_LOGS": "0"})


def run_logged(command: list[str], tmp_path: Path, env: dict[str, str]) -> str:
    """Run a trainer command in ``tmp_path`` within :data:`RUN_TIMEOUT_S`; its log (kept as a file), or the test
    fails with the log's end."""
    log_file = tmp_path / f"run_{len(list(tmp_path.glob('run_*.log')))}.log"
    try:
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        # subprocess.run hands back what the run wrote so far as bytes, even with text=True
        log = "".join(
            out.decode(errors="replace") if isinstance(out, bytes) else out or "" for out in (exc.stdout, exc.stderr)
        )
        log_file.write_text(log)
        pytest.fail(f"the run ran past {RUN_TIMEOUT_S} s; the end of its log ({log_file}):\n{log[-6000:]}")
    log = result.stdout + result.stderr
    log_file.write_text(log)
    assert result.returncode == 0, log[-6000:]
    return log


def mem1_train(tmp_path: Path, *overrides: str) -> str:
    """``mem1 train`` with nothing named but ``overrides``, ``VERL_PLATFORM`` unset (it picks the CPU platform)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", "VERL_FILE_LOGGER_PATH")}
    return run_logged(
        [sys.executable, "-m", "verl_mem1.cli", "train", *overrides], tmp_path, {**env, "RAY_DEDUP_LOGS": "0"}
    )


# The random tiny model earns no reward, so GRPO's advantages are zero; an entropy bonus and a larger step make every
# update move the weights, so that step 2's log-prob check also proves the rollout received them.
LEARNING = ("actor_rollout_ref.actor.entropy_coeff=0.01", "actor_rollout_ref.actor.optim.lr=1e-3")
# The 7B recipes' code-path switches that the CPU platform turns off to keep its smoke run small, back on: KL to the
# reference policy (verl's forward-only FSDP2 engine with CPU offload, unpinned by the CPU platform) and gradient
# checkpointing (the packed attention's kwargs must survive recomputation). test_config_on_cpu.py holds the platform
# to changing nothing else but sizes, devices and precision.
RECIPE_SWITCHES = (
    "actor_rollout_ref.actor.use_kl_loss=true",
    "actor_rollout_ref.actor.kl_loss_coef=0.1",
    "actor_rollout_ref.model.enable_gradient_checkpointing=true",
)


def check_steps(steps: dict[int, dict[str, float]], expected: list[int]) -> None:
    assert sorted(steps) == expected
    for step in expected:
        metrics = steps[step]
        # every generated token scored by verl's actor as the rollout sampled it, both fp32: the MEM1 invariant. A
        # probability difference (verl's metric): ~2e-11 in fp32; 4e-7 when verl's engines ran bf16 (near-uniform
        # probabilities of the random model keep the bf16 difference small)
        assert metrics["training/rollout_probs_diff_max"] <= 1e-8, (step, metrics["training/rollout_probs_diff_max"])
        assert metrics["response_length/mean"] > 0
        assert metrics["num_turns/mean"] >= 1


def check_logged_episodes(dump: Path, tiny_model_dir: Path, view: Path) -> None:
    """The agent loop's token-exact episodes sit beside verl's own dump of the same samples, and ``mem1 view`` shows
    them."""
    import json

    from transformers import AutoTokenizer

    from verl_mem1.cli import main
    from verl_mem1.viewer.load import load_episodes

    verl_rows = {
        step: [json.loads(line) for line in (dump / f"{step}.jsonl").read_text().splitlines()] for step in (1, 2)
    }
    loaded = load_episodes([dump])
    by_step: dict[int | None, list] = {}
    for episode in loaded:
        by_step.setdefault(episode.step, []).append(episode)
    assert sorted(len(v) for v in by_step.values()) == sorted(len(v) for v in verl_rows.values()), "one per sample"
    assert {e.model for e in loaded} == {str(tiny_model_dir)}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = {tokenizer.decode(e.record.prompt_ids, skip_special_tokens=True) for e in loaded}
    assert prompts == {row["input"] for rows in verl_rows.values() for row in rows}, "the very samples verl dumped"
    assert main(["view", str(dump), "--out", str(view)]) == 0
    assert (view / "index.html").stat().st_size > 10_000


@pytest.mark.e2e
@pytest.mark.timeout(2 * RUN_TIMEOUT_S + 60)
def test_mem1_train_v1_trainer_grpo_two_steps_then_resume_on_cpu(tmp_path):
    """`mem1 train` with nothing named but the switches below: verl's v1 trainer (GRPO, KL, gradient checkpointing) on
    the tiny model, tasks and bundled retriever that `mem1 train` prepares (verl_mem1/single_machine.py), the CPU
    platform chosen because no CUDA device is visible; two steps, a checkpoint, the episode log, the metrics log and
    `mem1 curve`; then a rerun resumes from the checkpoint."""
    dump = tmp_path / "rollouts"
    log = mem1_train(tmp_path, *LEARNING, *RECIPE_SWITCHES, f"trainer.rollout_data_dir={dump}")
    run = (tmp_path / "outputs" / "train" / "mem1" / "tiny").resolve()  # the tiny experiment's default_local_dir
    assert (run / "tiny-model" / "config.json").is_file() and (run / "data" / "train.parquet").is_file()
    assert "serving the bundled HotpotQA BM25 retriever on http://127.0.0.1:" in log
    steps = metrics_by_step(log)
    check_steps(steps, [1, 2])
    check_logged_episodes(dump, run / "tiny-model", tmp_path / "view")
    assert all(metrics["actor/grad_norm"] > 0 for metrics in steps.values())
    # the reference scored step 1's tokens with the weights the policy had then (the same fp32 forward: no exact-zero
    # promise across two engines), and step 2's policy has moved away from it
    assert steps[1]["timing_s/ref"] > 0 and abs(steps[1]["actor/kl_loss"]) <= 1e-6
    assert steps[2]["actor/kl_loss"] > 1e-6
    assert steps[2]["timing_s/update_weights"] > 0  # the rollout got the trained weights (verl's naive sync)
    checkpoint = run / "global_step_2" / "actor"
    assert (checkpoint / "model_world_size_1_rank_0.pt").is_file()
    assert (checkpoint / "optim_world_size_1_rank_0.pt").is_file()
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged] == [1, 2] and "critic/score/mean" in logged[0]["data"]

    from verl_mem1.cli import main

    assert main(["curve", str(run)]) == 0 and (run / "learning_curve.png").stat().st_size > 10_000

    log = mem1_train(tmp_path, *LEARNING, *RECIPE_SWITCHES, "trainer.total_training_steps=3")
    assert "global_step_2" in log  # verl's resume_mode=auto loads the step-2 checkpoint
    resumed = metrics_by_step(log)
    check_steps(resumed, [3])  # from global_step_2, one more step
    assert resumed[3]["actor/grad_norm"] > 0


@pytest.mark.e2e
@pytest.mark.timeout(RUN_TIMEOUT_S + FIXTURES_S)
def test_legacy_trainer_gae_on_webshop_on_cpu(tmp_path, tiny_model_dir, webshop_url, webshop_tasks):
    overrides = ("algorithm.adv_estimator=gae", "trainer.use_v1=false", *RECIPE_SWITCHES)
    log = webshop_main_ppo(tmp_path, tiny_model_dir, webshop_url, webshop_tasks, *overrides)
    steps = metrics_by_step(log)
    check_steps(steps, [1, 2])
    for metrics in steps.values():
        assert metrics["critic/vf_loss"] > 0  # the MEM1 value engine trained
        assert metrics["actor/grad_norm"] > 0  # advantages from the critic's values, not zero
