"""The environment registry (``verl_mem1/envs.py``): each spec agrees with the parts it names, and the consumers ask
the spec rather than the environment's name."""

from __future__ import annotations

import dataclasses

import pytest

from env_servers.commands import command_parser
from verl_mem1.config import FIELDS, ConfigError, Mem1Config
from verl_mem1.envs import ENV_SPECS, EnvSpec, env_spec, url_key_of_server
from verl_mem1.protocol.tags import get_tag_set
from verl_mem1.rollout.configure import make_environment, tag_set_for


@pytest.mark.parametrize("name", sorted(ENV_SPECS))
def test_each_spec_agrees_with_the_parts_it_names(name):
    spec = env_spec(name)
    client = spec.client_class()
    assert client.rewards_episodes == spec.scores_episodes, "the episode loop and the registry say the same"
    assert get_tag_set(spec.tags).answers != spec.scores_episodes, "answers are asked for exactly where they are scored"
    assert spec.url_key in FIELDS
    for server in spec.servers:  # real `mem1 serve` commands
        assert command_parser().parse_args(["serve", server, *_args(server)]).serve_command == server
        assert url_key_of_server(server) == spec.url_key
    mem1 = Mem1Config(env=name, **{spec.url_key: "http://127.0.0.1:9"})
    assert mem1.url() == "http://127.0.0.1:9" and tag_set_for(mem1) == spec.tags
    assert isinstance(make_environment(mem1), client)


def _args(server: str) -> list[str]:
    return {"retrieval": ["--index", "idx"], "websearch": ["--provider", "serper"], "webshop": []}[server]


def test_unknown_names_fail_naming_the_choices():
    with pytest.raises(ValueError, match="unknown environment 'shop'; choose one of retrieval, webshop"):
        env_spec("shop")
    with pytest.raises(ValueError, match="'llm' is not a `mem1 serve` server of an environment"):
        url_key_of_server("llm")
    with pytest.raises(ConfigError, match="choose one of retrieval, webshop"):
        Mem1Config(env="shop")


def test_a_new_environment_is_one_spec(monkeypatch):
    """What the rest of the package needs of an environment comes from its spec: a registered one is accepted by the
    config, gets its tag set, URL and client, and its reward rule (here a QA-like one on the retrieval client)."""
    spec = dataclasses.replace(env_spec("retrieval"), name="trivia", servers=("retrieval",), url_key="retriever_url")
    monkeypatch.setitem(ENV_SPECS, "trivia", spec)
    monkeypatch.setattr("verl_mem1.config.ENVS", tuple(ENV_SPECS))
    mem1 = Mem1Config(env="trivia", retriever_url="http://127.0.0.1:9")
    assert isinstance(spec, EnvSpec) and mem1.url() == "http://127.0.0.1:9" and tag_set_for(mem1) == "paper"
    with pytest.raises(ConfigError, match="does not fit mem1.env=trivia: use paper or search_r1"):
        Mem1Config(env="trivia", tags="webshop")
    with pytest.raises(ValueError, match="mem1.env=trivia serves no tasks"):
        spec.fetch_tasks("http://127.0.0.1:9", "0:1")
