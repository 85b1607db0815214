"""The single-machine trainer: PPO on a fixed batch of real episodes, `mem1 train` end to end, config errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
import torch

from verl_mem1.training import algorithms as algos
from verl_mem1.training.batch import build_batch, compute_batch_advantages
from verl_mem1.training.updates import PPOSettings, batch_logprobs, batch_values, update_critic, update_policy

QUESTIONS = [
    ("t1", "Which city hosted the band Tinted Windows' first performance?", ["Tulsa"]),
    ("t2", "Who wrote the novel that the film Stardust is based on?", ["Neil Gaiman"]),
]
N = 3  # episodes per task


@pytest.fixture(scope="module")
def fixed_batch(tiny_model_dir, retrieval_url):
    """Real MEM1 episodes (tiny model, real BM25 server), played by a private copy of the policy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_mem1.records import Task
    from verl_mem1.rollout.backends.hf_local import HFLocalBackend
    from verl_mem1.rollout.environment import RetrievalEnvironment
    from verl_mem1.rollout.episode import EpisodeConfig
    from verl_mem1.rollout.runner import run_episodes

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    policy = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    backend = HFLocalBackend(model=policy, tokenizer=tokenizer, seed=1)
    tasks = [Task(id=i, questions=[q], ground_truth=[a]) for i, q, a in QUESTIONS for _ in range(N)]
    env = RetrievalEnvironment(retrieval_url)

    async def go():
        try:
            return await run_episodes(
                tasks, backend, env, tokenizer, EpisodeConfig(max_turns=2, max_new_tokens=8), progress=False
            )
        finally:
            await env.aclose()

    records = asyncio.run(go())
    assert all(len(r.turns) == 2 for r in records), "every episode has two turns (random model: no answer)"
    # a synthetic reward favouring the first episode of each task
    scores = [1.0 if k % N == 0 else 0.0 for k in range(len(records))]
    groups = [r.id for r in records]
    return tiny_model_dir, records, scores, groups


def weighted_logprob(model, batch, settings) -> tuple[float, float, float]:
    """(−Σ A·log π / N, mean log π of A>0 tokens, mean log π of A<0 tokens) under ``model``."""
    lps = torch.cat(batch_logprobs(model, batch.samples, settings))
    adv = torch.cat(batch.advantages)
    return float(-(adv * lps).mean()), float(lps[adv > 0].mean()), float(lps[adv < 0].mean())


def test_ppo_updates_lower_the_loss_on_a_fixed_batch(fixed_batch):
    from transformers import AutoModelForCausalLM

    model_dir, records, scores, groups = fixed_batch
    policy = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    batch = build_batch(records, scores, groups)
    compute_batch_advantages(batch, "grpo")
    adv = torch.cat(batch.advantages)
    assert (adv > 0).any() and (adv < 0).any()
    settings = PPOSettings(ppo_epochs=1, mini_batch_episodes=0, micro_batch_episodes=3, clip_ratio=0.2)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=2e-3, weight_decay=0.0)

    before = weighted_logprob(policy, batch, settings)
    losses = []
    for k in range(4):  # the same batch again and again: only the first update starts from the rollout policy
        metrics = update_policy(policy, optimizer, batch, settings, check_logprobs=k == 0)
        losses.append(metrics["actor/pg_loss"])
        if k == 0:
            first = metrics
    after = weighted_logprob(policy, batch, settings)

    assert first["actor/rollout_logprob_diff"] <= 1e-4, "the first packed forward reproduces the rollout log-probs"
    assert first["actor/rollout_logprob_checked_tokens"] == sum(batch.lengths)
    assert losses[-1] < losses[0], losses
    assert after[0] < before[0], (before, after)
    assert after[1] > before[1], "log-probs of positively-advantaged tokens rise"
    assert after[2] < before[2], "log-probs of negatively-advantaged tokens fall"
    print(
        f"\npg_loss per update: {[round(x, 4) for x in losses]}; -A·logπ {before[0]:.4f} -> {after[0]:.4f}; "
        f"mean logπ A>0 {before[1]:.4f} -> {after[1]:.4f}, A<0 {before[2]:.4f} -> {after[2]:.4f}"
    )


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_segment_groups_give_the_packed_update(fixed_batch, agg):
    """mem1.segment_group_tokens: the same gradient (so the same SGD step) and metrics as one packed row."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    model_dir, records, scores, groups = fixed_batch
    batch = build_batch(records, scores, groups)
    compute_batch_advantages(batch, "grpo")
    base = PPOSettings(
        mini_batch_episodes=4, micro_batch_episodes=3, loss_agg_mode=agg, entropy_coeff=0.01, use_kl_loss=True
    )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    batch.ref_logprobs = [lp + 0.05 for lp in batch_logprobs(model, batch.samples, base)]  # a non-zero KL term

    def one_update(settings):
        policy = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        before = {n: p.detach().clone() for n, p in policy.named_parameters()}
        metrics = update_policy(policy, torch.optim.SGD(policy.parameters(), lr=1.0), batch, settings)
        return metrics, {n: p.detach() - before[n] for n, p in policy.named_parameters()}

    packed_metrics, packed_step = one_update(base)
    grouped_metrics, grouped_step = one_update(replace(base, segment_group_tokens=16))
    assert grouped_metrics.keys() == packed_metrics.keys()
    for key, value in packed_metrics.items():
        assert grouped_metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert abs(packed_metrics["actor/kl_loss"]) > 1e-3
    moved = 0
    for name, step in packed_step.items():
        scale = step.abs().max().item()
        moved += scale > 0
        assert (grouped_step[name] - step).abs().max().item() <= 1e-4 * scale + 1e-9, name
    assert moved > 10


def test_critic_and_gae_on_a_fixed_batch(fixed_batch):
    from transformers import AutoModelForTokenClassification

    model_dir, records, scores, groups = fixed_batch
    torch.manual_seed(0)
    critic = AutoModelForTokenClassification.from_pretrained(str(model_dir), num_labels=1, dtype=torch.float32)
    batch = build_batch(records, scores, groups)
    settings = PPOSettings(critic_ppo_epochs=1, cliprange_value=10.0)
    batch.values = batch_values(critic, batch.samples, settings)
    assert [v.numel() for v in batch.values] == batch.lengths
    compute_batch_advantages(batch, "gae", gamma=1.0, lam=0.95)
    for returns, values in zip(batch.returns, batch.values, strict=True):
        assert torch.isfinite(returns).all() and returns.shape == values.shape
    optimizer = torch.optim.AdamW(critic.parameters(), lr=1e-3, weight_decay=0.0)
    losses = [update_critic(critic, optimizer, batch, settings)["critic/vf_loss"] for _ in range(4)]
    assert losses[-1] < losses[0], losses
    print(f"\ncritic vf_loss per update: {[round(x, 4) for x in losses]}")


def test_segment_groups_give_the_packed_critic_update(fixed_batch):
    """The critic's clipped value loss back-propagated in segment groups: the packed update's step and metrics."""
    from dataclasses import replace

    from transformers import AutoModelForTokenClassification

    model_dir, records, scores, groups = fixed_batch

    def load():
        torch.manual_seed(0)  # the score head is freshly initialised: the same one for both runs
        critic = AutoModelForTokenClassification.from_pretrained(str(model_dir), num_labels=1, dtype=torch.float32)
        critic.dropout.p = 0.0  # a train-mode dropout would draw different masks in the two layouts
        return critic

    batch = build_batch(records, scores, groups)
    base = PPOSettings(mini_batch_episodes=4, micro_batch_episodes=3, cliprange_value=0.05)
    batch.values = batch_values(load(), batch.samples, base)
    compute_batch_advantages(batch, "gae", gamma=1.0, lam=0.95)
    batch.values = [v + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for v in batch.values]

    def one_update(settings):
        critic = load()
        before = {n: p.detach().clone() for n, p in critic.named_parameters()}
        metrics = update_critic(critic, torch.optim.SGD(critic.parameters(), lr=1.0), batch, settings)
        return metrics, {n: p.detach() - before[n] for n, p in critic.named_parameters()}

    packed_metrics, packed_step = one_update(base)
    grouped_metrics, grouped_step = one_update(replace(base, segment_group_tokens=16))
    assert 0 < packed_metrics["critic/vf_clipfrac"] < 1, "some values clipped, some not: both branches matter"
    for key, value in packed_metrics.items():
        assert grouped_metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    moved = 0
    for name, step in packed_step.items():
        scale = step.abs().max().item()
        moved += scale > 0
        assert (grouped_step[name] - step).abs().max().item() <= 1e-4 * scale + 1e-9, name
    assert moved > 10 and packed_step["score.weight"].abs().max() > 0


# ------------------------------------------------------------------------------------------------ mem1 train


def _read_metrics(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.e2e
def test_mem1_train_tiny_recipe_runs_checkpoints_and_resumes(tmp_path, monkeypatch, capsys):
    from verl_mem1.cli import main
    from verl_mem1.evaluation.curve import read_learning_curve

    run_dir = tmp_path / "run"
    common = [
        f"trainer.default_local_dir={run_dir}",
        "trainer.logger=[console,file]",
        "data.train_batch_size=2",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.rollout.response_length=8",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "mem1.max_turns=2",
        "trainer.save_freq=2",
        "trainer.val_before_train=true",
        "trainer.test_freq=2",
        "data.val_max_samples=2",
        "--no-progress",
    ]
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / "first.jsonl"))
    assert main(["train", "trainer.total_training_steps=2", *common]) == 0
    out = capsys.readouterr().out
    assert "resolved training config" in out and "adv_estimator: grpo" in out
    assert "step:1 - " in out and "step:2 - " in out, "metrics go to the console"
    logged = _read_metrics(tmp_path / "first.jsonl")
    assert [row["step"] for row in logged] == [0, 1, 2], "step 0: the held-out evaluation before training"
    assert "val/em" in logged[0]["data"] and "reward/mean" not in logged[0]["data"]
    for row in logged[1:]:
        data = row["data"]
        for key in (
            "reward/mean",
            "reward/em",
            "actor/ppo_kl",
            "actor/ref_kl",
            "actor/kl_loss",
            "actor/entropy",
            "actor/pg_clipfrac",
            "mem1/peak_tokens",
            "mem1/packed_length",
            "mem1/per_turn_length",
            "perf/tokens_per_s",
            "timing_s/step",
        ):
            assert key in data, key
        assert data["actor/rollout_logprob_diff"] <= 1e-4
        assert data["mem1/per_turn_length"] > data["mem1/packed_length"] > data["mem1/peak_tokens"] > 0
    checkpoint = run_dir / "global_step_2"
    assert (checkpoint / "actor" / "config.json").is_file() and (checkpoint / "actor" / "tokenizer.json").is_file()
    assert (checkpoint / "trainer_state.pt").is_file() and (checkpoint / "config.yaml").is_file()
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    assert state["global_step"] == 2 and "optimizer" in state and "rng" in state

    curve = read_learning_curve(run_dir)
    assert [row["training/global_step"] for row in curve] == [0, 1, 2], "held-out evaluation before training is 0"
    assert [("val/em" in row, "reward/mean" in row) for row in curve] == [(True, False), (False, True), (True, True)]
    assert curve[2]["val/episodes"] == 2 and curve[2]["val/em_se"] >= 0
    assert (run_dir / "learning_curve.csv").is_file() and (run_dir / "learning_curve.png").stat().st_size > 10_000
    scored = [json.loads(line) for line in (run_dir / "validation" / "step_2.jsonl").read_text().splitlines()]
    assert len(scored) == 2 and all({"id", "em", "f1", "reward", "answer"} <= set(row) for row in scored)

    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / "second.jsonl"))
    assert main(["train", "trainer.total_training_steps=3", *common]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {checkpoint} at step 2" in out
    assert [row["step"] for row in _read_metrics(tmp_path / "second.jsonl")] == [3], "continues from step 2, not 0"
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert [row["training/global_step"] for row in read_learning_curve(run_dir)] == [0, 1, 2, 3], "curve continues"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithm.adv_estimator=bogus", "algorithm.adv_estimator"),
        ("actor_rollout_ref.rollout.n=0", "actor_rollout_ref.rollout.n"),
        ("actor_rollout_ref.actor.ppo_mini_batch_size=5", "actor_rollout_ref.actor.ppo_mini_batch_size"),
        ("mem1.context=sliding", "mem1.context"),
        ("mem1.retriever_url=ftp://example", "mem1.retriever_url"),
        ("mem1.env=shop", "mem1.env"),
        ("mem1.webshop_url=localhost:8003", "mem1.webshop_url"),
        ("mem1.tags=webshop", "mem1.tags"),  # a WebShop tag set for QA
        ("mem1.invalid_action_penalty=-1", "mem1.invalid_action_penalty"),
        ("mem1.attention=sparse", "mem1.attention"),
        ("mem1.segment_group_tokens=0", "mem1.segment_group_tokens"),
        (  # GSPO's sequence-level ratio couples tokens: its loss cannot be back-propagated in groups
            "mem1.segment_group_tokens=256 actor_rollout_ref.actor.policy_loss.loss_mode=gspo",
            "mem1.segment_group_tokens",
        ),
        ("trainer.resume_mode=sometimes", "trainer.resume_mode"),
        ("data.train_files=/nonexistent/train.parquet", "data.train_files"),
        ("+mem1.no_such_key=1", "no_such_key"),  # added past Hydra, refused by Mem1Config
    ],
)
def test_bad_config_fails_at_start_up_naming_the_key(override, key, tmp_path, capsys):
    from verl_mem1.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", f"trainer.default_local_dir={run_dir}", *override.split()]) == 2
    err = capsys.readouterr().err
    assert "mem1 train: error:" in err and key in err, err
    assert not run_dir.exists(), "nothing was built or loaded"


def test_help_lists_the_recipe_and_common_overrides():
    result = subprocess.run(
        [sys.executable, "-m", "verl_mem1.cli", "train", "--help"], capture_output=True, text=True, check=True
    )
    assert "tiny" in result.stdout and "trainer.total_training_steps" in result.stdout
    assert "algorithm.adv_estimator" in result.stdout


def test_train_hands_its_arguments_to_hydra(capsys):
    """Every argument but --no-progress is Hydra's: --config-name picks a shipped recipe, --cfg job prints it."""
    from verl_mem1.cli import main

    assert main(["train", "--config-name", "qa", "--cfg", "job", "mem1.topk=5"]) == 0
    out = capsys.readouterr().out
    assert "retriever_url: http://127.0.0.1:8000" in out and "topk: 5" in out and "Qwen2.5-7B-Instruct" in out
    assert main(["train", "--config-name", "nope"]) != 0
    assert "nope" in capsys.readouterr().err


def test_micro_batches_by_count_and_by_tokens():
    from verl_mem1.training.updates import micro_batches

    class S:
        def __init__(self, length):
            self.length = length

    samples = [S(5), S(5), S(8), S(2)]
    assert micro_batches([0, 1, 2, 3], samples, 3, None) == [[0, 1, 2], [3]]
    assert micro_batches([0, 1, 2, 3], samples, None, None) == [[0, 1, 2, 3]]
    assert micro_batches([0, 1, 2, 3], samples, None, 10) == [[0, 1], [2, 3]]


def test_policy_rows_align_with_packed_order(fixed_batch):
    _, records, scores, groups = fixed_batch
    batch = build_batch(records, scores, groups)
    compute_batch_advantages(batch, "grpo")
    for sample, adv, old in zip(batch.samples, batch.advantages, batch.old_logprobs, strict=True):
        assert adv.numel() == old.numel() == sample.num_generated
        assert torch.equal(old, sample.rollout_logprobs[sample.loss_mask.bool()])
        assert torch.unique(adv).numel() == 1, "an outcome advantage is the same on every generated token"
    assert algos.episode_lengths(batch.samples[0]) == [batch.samples[0].num_generated]


def test_episodes_the_environment_failed_are_never_trained_on(fixed_batch):
    """An ``env_error`` episode leaves the batch (its group compares the others); too many of them stop the step."""
    import copy

    from verl_mem1.training.batch import env_error_count

    _, records, scores, groups = fixed_batch
    failed = copy.deepcopy(records[0])
    failed.termination, failed.error = "env_error", "retrieval server unreachable"
    with_failure = build_batch([failed, *records[1:]], scores, groups)
    without = build_batch(records[1:], scores[1:], groups[1:])
    compute_batch_advantages(with_failure, "grpo")
    compute_batch_advantages(without, "grpo")
    assert [r.id for r in with_failure.records] == [r.id for r in without.records]
    assert all(torch.equal(a, b) for a, b in zip(with_failure.advantages, without.advantages, strict=True))
    assert env_error_count([failed, *records[1:]], max_rate=0.5) == 1
    with pytest.raises(RuntimeError, match=r"1 of 2 episodes lost their environment .*retrieval server unreachable"):
        env_error_count([failed, records[1]], max_rate=0.25)
