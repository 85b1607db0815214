"""``rollout.configure``: the one place a run's ``Mem1Config`` becomes episode settings and an environment client."""

from __future__ import annotations

import pytest

from verl_mem1.config import Mem1Config
from verl_mem1.records import Task
from verl_mem1.rollout.configure import episode_config, make_environment, tag_set_for
from verl_mem1.rollout.environment import RetrievalEnvironment, WebShopEnvironment


def _task(**extra) -> Task:
    return Task(id="t", questions=["q1", "q2"], ground_truth=[["a"], ["b"]], extra_info=extra)


def test_precedence_explicit_then_task_then_default():
    own = _task(tags="search_r1", max_turns=9)
    assert tag_set_for(Mem1Config(), own) == "search_r1" and tag_set_for(Mem1Config(), _task()) == "paper"
    assert tag_set_for(Mem1Config(tags="paper"), own) == "paper"
    assert tag_set_for(Mem1Config(env="webshop")) == "webshop"
    assert episode_config(Mem1Config(), own, max_new_tokens=8).max_turns == 9
    assert episode_config(Mem1Config(max_turns=3), own, max_new_tokens=8).max_turns == 3
    assert episode_config(Mem1Config(), _task(), max_new_tokens=8).max_turns is None  # the loop's default


def test_sampling_and_token_budgets():
    config = episode_config(Mem1Config(context="full"), _task(), temperature=0.0, top_k=0, max_new_tokens=32)
    assert (config.temperature, config.top_k, config.max_new_tokens, config.context) == (0.0, -1, 32, "full")
    assert episode_config(Mem1Config(max_new_tokens=5), None, max_new_tokens=32).max_new_tokens == 5
    assert episode_config(Mem1Config(), None, max_new_tokens=4, max_context_tokens=100).max_context_tokens == 100
    assert episode_config(Mem1Config(max_context_tokens=50), None, max_new_tokens=4, max_context_tokens=100) == (
        episode_config(Mem1Config(max_context_tokens=50), None, max_new_tokens=4)
    )
    with pytest.raises(ValueError, match="max_new_tokens"):
        episode_config(Mem1Config(), None)


def test_environment_clients():
    retrieval = make_environment(Mem1Config(topk=5, retriever_url="http://h:1"))
    assert isinstance(retrieval, RetrievalEnvironment) and retrieval.topk == 5 and retrieval.url == "http://h:1"
    shop = make_environment(Mem1Config(env="webshop"), "http://shop:2")
    assert isinstance(shop, WebShopEnvironment) and shop.url == "http://shop:2"
    with pytest.raises(ValueError, match="retriever_url=auto"):
        make_environment(Mem1Config(retriever_url="auto"))
