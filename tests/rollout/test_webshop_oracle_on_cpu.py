"""The scripted WebShop shopper (``WebShopOracleBackend``, ``mem1 trajectories --env webshop``): the real WebShop
server over the bundled 100-product shop, the tiny model's real Qwen2.5 tokenizer."""

from __future__ import annotations

import asyncio
import json

import pytest

from verl_mem1.cli import main
from verl_mem1.config import Mem1Config
from verl_mem1.records import load_tasks
from verl_mem1.rollout.backends.oracle import ORACLE_MARK, run_oracle_episodes
from verl_mem1.rollout.backends.webshop_oracle import WebShopOracleBackend
from verl_mem1.rollout.configure import episode_config, make_environment
from verl_mem1.tasks.compose import write_tasks_parquet
from verl_mem1.tasks.webshop import webshop_rows, webshop_task

MEM1 = Mem1Config(env="webshop", max_turns=10, max_new_tokens=512)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _play(tasks, tokenizer, url, mem1=MEM1):
    config = episode_config(mem1)

    async def go():
        env = make_environment(mem1, url)
        try:
            return await run_oracle_episodes(
                tasks, env, tokenizer, config, backend=WebShopOracleBackend(tasks, tokenizer, config),
                reward_fn=None, progress=False,
            )  # fmt: skip
        finally:
            await env.aclose()

    return asyncio.run(go())


def _goals(url, spec):
    from verl_mem1.rollout.environment import fetch_webshop_tasks

    return fetch_webshop_tasks(url, spec)


def test_oracle_buys_the_goal_product_with_its_options(webshop_url, webshop_shop, tokenizer):
    from env_servers.webshop.reward import purchase_reward

    tasks = _goals(webshop_url, "0:40")
    records = _play(tasks, tokenizer, webshop_url)
    catalog = webshop_shop.catalog
    for task, record in zip(tasks, records, strict=True):
        goal = catalog.goals[task.extra_info["goal_index"]]
        # WebShop's own score of the exact purchase (its option rule gives some exactly-right purchases less than 1)
        right, _ = purchase_reward(
            catalog.by_asin[goal["asin"]], goal, catalog.prices[goal["asin"]], goal["goal_options"], webshop_shop.nouns
        )
        assert record.reward == right
        actions = [t.action["text"] for t in record.turns]
        assert actions[0] == f"search[{goal['instruction_text']}]"
        assert actions[1] == f"click[{goal['asin'].lower()}]" or actions[1] == "click[next >]"
        chosen = {a[len("click[") : -1] for a in actions[2:-1]} - {"next >", goal["asin"].lower()}
        assert chosen == {v.lower() for v in goal["goal_options"].values() if v}, "every goal option, once"
        assert actions[-1] == "click[buy now]" and record.termination == "done"
        assert all(t.action["kind"] != "invalid" for t in record.turns) and record.sampling[ORACLE_MARK]
        last_state = record.turns[-1].internal_state
        assert goal["asin"] in last_state and all(f"{n}: {v}" in last_state for n, v in goal["goal_options"].items())
    assert sum(r.reward == 1.0 for r in records) >= 36


def test_records_are_token_exact_mem1_contexts(webshop_url, tokenizer):
    (record,) = _play(_goals(webshop_url, "3:4"), tokenizer, webshop_url)
    prompt = record.prompt_ids
    for previous, turn in zip(record.turns, record.turns[1:], strict=False):
        assert turn.context_ids == prompt + previous.generated_ids + previous.observation_ids, "prompt + last turn"
    for turn in record.turns:
        assert tokenizer.decode(turn.generated_ids) == turn.text and turn.logprobs == [0.0] * len(turn.generated_ids)


def test_tasks_from_parquet_carry_the_goal(webshop_url, webshop_shop, tokenizer, tmp_path):
    rows = webshop_rows(webshop_shop.catalog.goals, range(5, 9), split="train")
    tasks = load_tasks(write_tasks_parquet(rows, tmp_path / "shop.parquet"))
    for task, i in zip(tasks, range(5, 9), strict=True):
        goal = webshop_shop.catalog.goals[i]
        assert task.extra_info["target_asin"] == goal["asin"]
        assert task.extra_info["goal_options"] == {k: v for k, v in goal["goal_options"].items() if v is not None}
    assert [r.reward for r in _play(tasks, tokenizer, webshop_url)] == [1.0] * 4  # goals 5-8: full marks in WebShop


def test_oracle_refuses_tasks_it_cannot_play(tokenizer):
    config = episode_config(MEM1)
    with pytest.raises(ValueError, match="target_asin"):
        WebShopOracleBackend([webshop_task(0, "buy socks")], tokenizer, config)
    qa = episode_config(Mem1Config(tags="paper", max_new_tokens=64))
    with pytest.raises(ValueError, match="QA dialect"):
        WebShopOracleBackend([webshop_task(0, "buy socks", "B000")], tokenizer, qa)


def test_mem1_trajectories_webshop(webshop_url, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "shop.jsonl"
    args = ["trajectories", "--policy", "oracle", "--env", "webshop", "--webshop", webshop_url, "--goals", "10:15"]
    assert main([*args, "--tokenizer", str(tiny_model_dir), "--out", str(out), "--max-turns", "10"]) == 0
    assert "kept 5/5 oracle episodes (reward >= 1.0)" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5
    assert all(r["reward"] == 1.0 and r["turns"][-1]["action"]["text"] == "click[buy now]" for r in rows)
    assert main(["trajectories", "--policy", "oracle", "--tokenizer", str(tiny_model_dir), "--out", str(out)]) == 2
    assert "needs --tasks and --retriever" in capsys.readouterr().err
