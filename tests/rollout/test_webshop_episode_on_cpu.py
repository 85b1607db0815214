"""WebShop episodes through the MEM1 loop: real tiny model scoring, real WebShop server, the environment's reward."""

from __future__ import annotations

import asyncio

from tests.support import ScriptedBackend
from verl_mem1.protocol import WEBSHOP, turns_left_hint
from verl_mem1.rollout.environment import WebShopEnvironment
from verl_mem1.rollout.episode import EpisodeConfig, default_max_turns, run_episode
from verl_mem1.tasks.webshop import webshop_task


def _goal_with_options(shop, min_options: int = 2) -> int:
    return next(i for i, g in enumerate(shop.catalog.goals) if len(g["goal_options"]) >= min_options)


def _buying_script(shop, index: int, options: dict[str, str] | None = None) -> list[str]:
    """Search the target's title, open it, click the goal's options, buy: what a perfect shopper does."""
    goal = shop.catalog.goals[index]
    product = shop.catalog.by_asin[goal["asin"]]
    chosen = goal["goal_options"] if options is None else options
    actions = [f"search[{product['Title']}]", f"click[{goal['asin'].lower()}]"]
    actions += [f"click[{value}]" for value in chosen.values()]
    actions.append("click[Buy Now]")
    return [f"<IS>goal {index}: step {i}</IS><action>{a}</action>" for i, a in enumerate(actions)]


def _play(backend, url, tokenizer, task, **config):
    async def go():
        env = WebShopEnvironment(url)
        try:
            return await run_episode(task, backend, env, tokenizer, EpisodeConfig(tags="webshop", **config))
        finally:
            await env.aclose()

    return asyncio.run(go())


def _task(shop, index):
    goal = shop.catalog.goals[index]
    return webshop_task(index, goal["instruction_text"], goal["asin"])


def test_a_perfect_shopper_scores_one(tiny_backend, webshop_shop, webshop_url):
    tok = tiny_backend.tokenizer
    index = _goal_with_options(webshop_shop)
    script = _buying_script(webshop_shop, index)
    backend = ScriptedBackend(tiny_backend.model, tok, script)
    open_before = webshop_shop.num_sessions
    record = _play(backend, webshop_url, tok, _task(webshop_shop, index), max_turns=12)
    assert record.termination == "done" and record.reward == 1.0
    assert webshop_shop.num_sessions == open_before  # the episode closed its session
    assert len(record.turns) == len(script) and record.turns[-1].observation_ids == []
    first = tok.decode(record.turns[0].observation_ids)
    assert "Page 1 (Total results:" in first and "Available actions: click[back to search]" in first
    assert turns_left_hint(11, WEBSHOP) in first
    assert webshop_shop.catalog.goals[index]["asin"].lower() in first  # the title search finds the target
    # the prompt holds the instruction; under mem1 every later context is the prompt plus the last turn only
    assert webshop_shop.catalog.goals[index]["instruction_text"] in tok.decode(record.prompt_ids)
    for prev, turn in zip(record.turns, record.turns[1:], strict=False):
        assert turn.context_ids == record.prompt_ids + prev.generated_ids + prev.observation_ids


def test_wrong_option_scores_what_webshops_formula_gives(tiny_backend, webshop_shop, webshop_url):
    from env_servers.webshop.reward import purchase_reward

    tok = tiny_backend.tokenizer
    index = _goal_with_options(webshop_shop)
    goal = webshop_shop.catalog.goals[index]
    product = webshop_shop.catalog.by_asin[goal["asin"]]
    name, wanted = next(iter(goal["goal_options"].items()))
    other = next(v for v in product["options"][name] if v != wanted)
    options = {**goal["goal_options"], name: other}
    backend = ScriptedBackend(tiny_backend.model, tok, _buying_script(webshop_shop, index, options))
    record = _play(backend, webshop_url, tok, _task(webshop_shop, index), max_turns=12)
    expected, _ = purchase_reward(product, goal, webshop_shop.catalog.prices[goal["asin"]], options, webshop_shop.nouns)
    assert record.termination == "done" and record.reward == expected < 1.0


def test_no_purchase_scores_zero_and_bad_actions_are_invalid_turns(tiny_backend, webshop_shop, webshop_url):
    tok = tiny_backend.tokenizer
    script = [
        "<IS>x</IS><action>click[buy now]</action>",  # no Buy Now on the search page: the server says so
        "<IS>x</IS>no action at all",  # the parser says so
        "<IS>x</IS><action>search[hoodie]</action>",
    ]
    backend = ScriptedBackend(tiny_backend.model, tok, script)
    record = _play(backend, webshop_url, tok, _task(webshop_shop, 0), max_turns=3, invalid_action_penalty=0.1)
    assert record.termination == "max_turns" and len(record.turns) == 3
    kinds = [t.action["kind"] for t in record.turns]
    assert kinds == ["invalid", "invalid", "query"]
    assert "Invalid action" in record.turns[0].action["reason"]
    assert record.turns[1].action["reason"] == "no action: expected <action>…</action>"  # WebShop agents never answer
    assert "Invalid action" in tok.decode(record.turns[0].observation_ids)
    assert abs(record.reward - (0.0 - 0.2)) < 1e-9  # no purchase is 0, minus the penalty for two invalid turns


def test_a_purchase_on_the_last_turn_counts(tiny_backend, webshop_shop, webshop_url):
    tok = tiny_backend.tokenizer
    index = next(i for i, g in enumerate(webshop_shop.catalog.goals) if not g["goal_options"])
    script = _buying_script(webshop_shop, index)
    backend = ScriptedBackend(tiny_backend.model, tok, script)
    record = _play(backend, webshop_url, tok, _task(webshop_shop, index), max_turns=len(script))
    assert record.termination == "done" and record.reward == 1.0
    last_hint = tok.decode(record.turns[-2].observation_ids)
    assert "click[Buy Now]" in last_hint and "last turn" in last_hint


def test_a_task_from_other_data_fails_cleanly(tiny_backend, webshop_shop, webshop_url):
    tok = tiny_backend.tokenizer
    backend = ScriptedBackend(tiny_backend.model, tok, [])
    wrong = webshop_task(3, "an instruction this shop does not have")
    record = _play(backend, webshop_url, tok, wrong, max_turns=3)
    assert record.termination == "env_error" and record.turns == [] and "other WebShop data" in record.error
    missing = webshop_task(10**6, "x")
    record = _play(backend, webshop_url, tok, missing, max_turns=3)
    assert record.termination == "env_error" and "out of range" in record.error
    assert backend.contexts == []  # nothing was generated


def test_default_turns_and_goal_listing(webshop_shop, webshop_url):
    assert default_max_turns(1, "webshop") == 15 and default_max_turns(1) == 6

    async def go():
        env = WebShopEnvironment(webshop_url)
        try:
            return await env.goals("5:9")
        finally:
            await env.aclose()

    tasks = asyncio.run(go())
    assert [t.extra_info["goal_index"] for t in tasks] == [5, 6, 7, 8]
    assert [t.questions[0] for t in tasks] == [g["instruction_text"] for g in webshop_shop.catalog.goals[5:9]]
