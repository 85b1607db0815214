"""``mem1 sft``: supervised fine-tuning on episode records, on the packed layout RL trains on."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from tests.support import ScriptedBackend, recompute_logprobs
from verl_mem1.training.layout import pack_episode
from verl_mem1.training.sft import load_episodes, sft_nll, split_episodes


@pytest.fixture(scope="module")
def scripted_episodes(tiny_model_dir, retrieval_url, tmp_path_factory):
    """12 two-turn MEM1 episodes in the paper's format (query, then answer), played through the real episode loop
    against the real BM25 server, written as JSONL like `mem1 rollout` writes it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_mem1.records import load_tasks
    from verl_mem1.rollout.environment import RetrievalEnvironment
    from verl_mem1.rollout.episode import EpisodeConfig
    from verl_mem1.rollout.runner import run_episodes, write_episodes
    from verl_mem1.tasks.rewards import score_answer
    from verl_mem1.tasks.sources import bundled_path

    def exact_match(answer, truth):
        return score_answer(answer, truth).em

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tasks = load_tasks(bundled_path("hotpotqa-dev"), limit=12)
    texts = []
    for task in tasks:
        texts += [
            f"<IS>I need: {task.questions[0]}</IS><query>{task.questions[0]}</query>",
            f"<IS>The answer is {task.ground_truth[0][0]}.</IS><answer>{task.ground_truth[0][0]}</answer>",
        ]
    backend = ScriptedBackend(model, tokenizer, texts)

    async def go():
        env = RetrievalEnvironment(retrieval_url)
        try:
            config = EpisodeConfig(max_turns=2, max_new_tokens=256)
            return await run_episodes(
                tasks, backend, env, tokenizer, config, concurrency=1, progress=False, reward_fn=exact_match
            )
        finally:
            await env.aclose()

    records = asyncio.run(go())
    path = tmp_path_factory.mktemp("sft") / "episodes.jsonl"
    write_episodes(path, records)
    return path, model


def test_the_loss_is_the_nll_of_generated_tokens_only(scripted_episodes):
    """The packed loss equals −Σ log p(generated | its own context) from plain per-turn forwards: observations,
    the prompt and copied context are read but never targets."""
    path, model = scripted_episodes
    record = load_episodes(path)[0]
    assert len(record.turns) == 2 and record.turns[1].observation_ids == [] and record.turns[0].observation_ids
    expected = -sum(sum(recompute_logprobs(model, turn.context_ids, turn.generated_ids, 1.0)) for turn in record.turns)
    with torch.no_grad():
        nll, tokens = sft_nll(model, pack_episode(record), backend="segmented")
    assert tokens == sum(len(t.generated_ids) for t in record.turns)
    assert nll == pytest.approx(expected, rel=1e-5)


def test_segment_groups_give_the_packed_gradient(scripted_episodes, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    path, _ = scripted_episodes
    sample = pack_episode(load_episodes(path)[1])
    grads = []
    for group_tokens in (None, 16):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        nll, _ = sft_nll(model, sample, backend="segmented", scale=0.5, group_tokens=group_tokens)
        grads.append((nll, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (packed_nll, packed), (grouped_nll, grouped) = grads
    assert grouped_nll == pytest.approx(packed_nll, rel=1e-5) and packed.keys() == grouped.keys()
    for name, grad in packed.items():
        assert (grouped[name] - grad).norm() <= 1e-4 * grad.norm() + 1e-8, name


def test_split_and_filters(scripted_episodes, tmp_path):
    from verl_mem1.config import ConfigError

    path, _ = scripted_episodes
    records = load_episodes(path)
    train, val = split_episodes(records, 0.25, seed=3)
    assert (len(train), len(val)) == (9, 3) and {r.id for r in train}.isdisjoint(r.id for r in val)
    assert [r.id for r in split_episodes(records, 0.25, seed=3)[1]] == [r.id for r in val], "seeded"
    assert split_episodes(records, 0.0, seed=3) == (records, [])
    with pytest.raises(ConfigError, match="val_fraction"):
        split_episodes(records, 1.0, seed=0)
    assert {r.reward for r in records} == {1.0}, "the scripted answers are the ground truth"
    assert load_episodes(path, min_reward=1.5) == []
    with pytest.raises(ConfigError, match="episode file not found"):
        load_episodes(tmp_path / "missing.jsonl")


def _logged(path) -> dict[int, dict]:
    """verl's file logger: one row per log call (verl's SFT trainer logs a step's training and validation metrics
    apart), merged per step."""
    steps: dict[int, dict] = {}
    for row in map(json.loads, path.read_text().splitlines()):
        steps.setdefault(row["step"], {}).update(row["data"])
    return steps


@pytest.mark.e2e
def test_mem1_sft_lowers_validation_loss_checkpoints_and_resumes(
    scripted_episodes, tiny_model_dir, tmp_path, monkeypatch
):
    """``mem1 sft`` (verl's SFT trainer): the seeded validation split, the validation loss falling below the initial
    model's on the same episodes, a Hugging Face checkpoint, and verl's resume continuing at the next step."""
    from transformers import AutoModelForCausalLM

    from verl_mem1.cli import main

    path, initial = scripted_episodes
    run = tmp_path / "run"
    common = [
        f"data.train_files=[{path}]",
        "data.val_fraction=0.25",
        "data.train_batch_size=3",
        "data.micro_batch_size_per_gpu=1",
        f"model.path={tiny_model_dir}",
        "optim.lr=3e-3",
        "optim.lr_warmup_steps_ratio=0",
        "optim.lr_scheduler_type=constant",
        f"trainer.default_local_dir={run}",
        "trainer.logger=[console,file]",
        "trainer.test_freq=2",
        "trainer.save_freq=2",
    ]
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / "first.jsonl"))
    assert main(["sft", "--no-progress", "trainer.total_training_steps=4", *common]) == 0
    logged = _logged(tmp_path / "first.jsonl")
    val = load_episodes(run / "data" / "val.jsonl")  # the split mem1 sft wrote: 3 of the 12 episodes
    assert len(val) == 3 and len(load_episodes(run / "data" / "train.jsonl")) == 9
    with torch.no_grad():
        sums = [sft_nll(initial, pack_episode(r), backend="dense") for r in val]
    before = sum(s for s, _ in sums) / sum(n for _, n in sums)
    assert logged[4]["val/loss"] < before - 0.5, (before, logged)
    assert logged[4]["train/loss"] < logged[1]["train/loss"]
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    AutoModelForCausalLM.from_pretrained(run / "global_step_4" / "huggingface")  # a Hugging Face folder

    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / "second.jsonl"))
    assert main(["sft", "--no-progress", "trainer.total_training_steps=6", *common]) == 0
    assert sorted(_logged(tmp_path / "second.jsonl")) == [5, 6]  # resumed from global_step_4


def test_bad_sft_config_fails_at_start_up(scripted_episodes, tiny_model_dir, tmp_path, capsys):
    from verl_mem1.cli import main

    path, _ = scripted_episodes
    base = [f"model.path={tiny_model_dir}", f"trainer.default_local_dir={tmp_path / 'run'}"]
    assert main(["sft", f"data.train_files=[{tmp_path / 'nope.jsonl'}]", *base]) == 2
    assert "episode file not found" in capsys.readouterr().err
    assert main(["sft", f"data.train_files=[{path}]", "data.train_batch_size=50", *base]) == 2
    assert "data.train_batch_size=50" in capsys.readouterr().err
    assert main(["sft", f"data.train_files=[{path}]", "mem1.attention=bogus", *base]) == 2
    assert "mem1.attention" in capsys.readouterr().err
    # 12 episodes, val_fraction 0.1: one validation episode, and verl's loader would drop it (batch 8)
    assert main(["sft", f"data.train_files=[{path}]", *base]) == 2
    assert "raise data.val_fraction" in capsys.readouterr().err
    assert (
        main(["sft", f"data.train_files=[{path}]", "data.val_fraction=0", "data.micro_batch_size_per_gpu=3", *base])
        == 2
    )
    assert "not a multiple of data.micro_batch_size_per_gpu=3" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
