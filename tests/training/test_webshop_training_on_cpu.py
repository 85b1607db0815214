"""Training on WebShop: the shop's purchase reward drives GRPO on real episodes; `mem1 train mem1.env=webshop`."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from tests.support import ScriptedBackend
from verl_mem1.rollout.environment import WebShopEnvironment
from verl_mem1.rollout.episode import EpisodeConfig
from verl_mem1.rollout.runner import run_episodes
from verl_mem1.tasks.webshop import webshop_task
from verl_mem1.training.batch import build_batch, compute_batch_advantages
from verl_mem1.training.updates import PPOSettings, batch_logprobs, update_policy

pytestmark = pytest.mark.e2e


def _scripts(shop, index: int) -> tuple[list[str], list[str]]:
    """A perfect shopper's turns and the same turns with one option wrong."""
    goal = shop.catalog.goals[index]
    product = shop.catalog.by_asin[goal["asin"]]
    name, wanted = next(iter(goal["goal_options"].items()))
    other = next(v for v in product["options"][name] if v != wanted)

    def turns(options: dict[str, str]) -> list[str]:
        actions = [f"search[{product['Title']}]", f"click[{goal['asin'].lower()}]"]
        actions += [f"click[{v}]" for v in options.values()] + ["click[Buy Now]"]
        return [f"<IS>step {i}</IS><action>{a}</action>" for i, a in enumerate(actions)]

    return turns(goal["goal_options"]), turns({**goal["goal_options"], name: other})


def test_grpo_on_webshop_rewards_favours_the_right_purchase(tiny_model_dir, webshop_shop, webshop_url):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    policy = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    index = next(i for i, g in enumerate(webshop_shop.catalog.goals) if len(g["goal_options"]) >= 2)
    right, wrong = _scripts(webshop_shop, index)
    goal = webshop_shop.catalog.goals[index]
    task = webshop_task(index, goal["instruction_text"], goal["asin"])

    async def play(script):
        env = WebShopEnvironment(webshop_url)
        try:
            backend = ScriptedBackend(policy, tokenizer, script)
            config = EpisodeConfig(tags="webshop", max_turns=10)
            return (await run_episodes([task], backend, env, tokenizer, config, progress=False))[0]
        finally:
            await env.aclose()

    records = [asyncio.run(play(s)) for s in (right, wrong, right, wrong)]
    scores = [r.reward for r in records]
    assert scores[0] == scores[2] == 1.0 and scores[1] == scores[3] < 1.0, scores
    batch = build_batch(records, scores, [r.id for r in records])
    compute_batch_advantages(batch, "grpo")
    advantages = [float(a.max()) for a in batch.advantages]
    assert advantages[0] > 0 > advantages[1], "the right purchase is advantaged within the goal's group"

    settings = PPOSettings(ppo_epochs=1, mini_batch_episodes=0, micro_batch_episodes=4, clip_ratio=0.2)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=2e-3, weight_decay=0.0)

    def episode_logprob(k: int) -> float:
        with torch.no_grad():
            return float(batch_logprobs(policy, batch.samples, settings)[k].sum())

    before = [episode_logprob(k) for k in (0, 1)]
    first = update_policy(policy, optimizer, batch, settings, check_logprobs=True)
    for _ in range(3):
        update_policy(policy, optimizer, batch, settings, check_logprobs=False)
    after = [episode_logprob(k) for k in (0, 1)]
    assert first["actor/rollout_logprob_diff"] <= 1e-4
    assert after[0] - before[0] > after[1] - before[1], (before, after)
    assert after[0] > before[0], "the right purchase became more likely"


def test_mem1_train_on_webshop_logs_the_shops_reward(tmp_path, monkeypatch, capsys):
    from verl_mem1.cli import main as mem1_main

    tasks = tmp_path / "webshop-train.parquet"
    assert mem1_main(["webshop-tasks", "--goals", "50:54", "--out", str(tasks)]) == 0
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / "metrics.jsonl"))
    args = [
        f"trainer.default_local_dir={tmp_path / 'run'}",
        "trainer.logger=[console,file]",
        "trainer.total_training_steps=1",
        f"data.train_files={tasks}",
        "actor_rollout_ref.rollout.response_length=8",
        "mem1.env=webshop",
        "mem1.max_turns=2",
        "mem1.max_observation_tokens=64",
        "--no-progress",
    ]
    assert mem1_main(["train", *args]) == 0
    out = capsys.readouterr().out
    assert "serving the bundled WebShop on http://127.0.0.1:" in out
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    data = row["data"]
    assert "reward/success_rate" in data and "reward/em" not in data
    assert data["reward/mean"] == 0.0, "a random model buys nothing"
    assert data["episode/turns"] == 2.0 and data["actor/rollout_logprob_diff"] <= 1e-4
