"""``Mem1Config``: one typed mem1 section, validated once, shared by the trainer, the plug-in and the CLI."""

from __future__ import annotations

import pytest

from verl_mem1.config import (
    ATTENTION_ENV,
    FIELDS,
    ConfigError,
    Mem1Config,
)
from verl_mem1.training import attention
from verl_mem1.training.attention import attention_backend


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("env", "shop", "choose one of retrieval, webshop"),
        ("retriever_url", "localhost:8000", "http"),
        ("context", "window:0", "mem1.context"),
        ("tags", "nope", "mem1.tags"),
        ("topk", 0, "must be >= 1"),
        ("max_turns", 2.5, "expected an integer"),
        ("invalid_action_penalty", -1, "must be >= 0"),
        ("attention", "sdpa", "choose one of auto"),
        ("env_retries", -1, "must be >= 0"),
        ("layout", "flat", "choose one of packed"),
    ],
)
def test_bad_values_fail_naming_the_key(key, value, why):
    with pytest.raises(ConfigError, match=f"mem1.{key}") as err:
        Mem1Config.from_section({key: value})
    assert why in str(err.value)


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="does not fit mem1.env=webshop"):
        Mem1Config(env="webshop", tags="paper")
    with pytest.raises(ConfigError, match="needs in_loop"):
        Mem1Config(env="webshop", reward="verl")
    assert Mem1Config(env="webshop", tags="webshop").url() == "http://127.0.0.1:8003"


def test_unknown_keys_are_errors_and_fields_are_frozen():
    with pytest.raises(ConfigError, match=r"unknown mem1 config keys \['tpok'\]"):
        Mem1Config.from_section({"tpok": 3})
    config = Mem1Config.from_section({"topk": 5}, context="full")
    assert (config.topk, config.context, config["context"]) == (5, "full", "full")
    assert set(config) == FIELDS | {"_target_"}  # a Mapping, as every verl BaseConfig
    with pytest.raises(Exception, match="frozen"):
        config.topk = 3
    assert config.replace(topk=7).topk == 7 and config.topk == 5


def test_every_recipe_mem1_section_is_a_valid_config():
    """Every shipped recipe composes into a valid Mem1Config: no key there that the dataclass does not define."""
    from verl_mem1.recipes import compose_config, recipe_names

    for name in recipe_names():
        Mem1Config.from_trainer_config(compose_config(name))


def test_the_tiny_experiment_is_the_qa_recipe_on_the_cpu_platform_with_placeholders():
    """`mem1 train`'s default: verl's qa recipe, the CPU platform, and the three placeholders only `mem1 train`
    resolves (single_machine.py); its single_machine: section is a valid SingleMachineConfig."""
    from verl_mem1.recipes import compose_config
    from verl_mem1.single_machine import SingleMachineConfig

    qa, tiny = compose_config("qa"), compose_config("qa", ["+experiment=tiny"])
    assert tiny.trainer.device == "cpu" and tiny.actor_rollout_ref.rollout.name == "mem1_hf"
    assert tiny.actor_rollout_ref.model.path == "tiny" and tiny.data.train_files is None
    assert tiny.mem1.retriever_url == "auto" and tiny.mem1.webshop_url == "auto"
    assert tiny.reward.custom_reward_function == qa.reward.custom_reward_function  # the qa recipe's reward
    assert SingleMachineConfig.from_trainer_config(tiny).train_source == "hotpotqa-train"
    with pytest.raises(ConfigError, match="single_machine"):
        SingleMachineConfig.from_trainer_config(compose_config("qa", ["+experiment=tiny", "+single_machine.bogus=1"]))


def test_attention_backend_auto_and_environment_override(monkeypatch):
    monkeypatch.delenv(ATTENTION_ENV, raising=False)
    assert attention_backend("auto", "cpu") == "segmented"
    assert attention_backend("dense", "cpu") == "dense" and attention_backend("flex", "cpu") == "segmented"
    assert attention_backend("auto", "cuda") == ("flash" if attention.flash_varlen_implementation() else "segmented")
    monkeypatch.setenv(ATTENTION_ENV, "dense")
    assert attention_backend("segmented", "cpu") == "dense" and attention_backend("auto", "cuda") == "dense"
    monkeypatch.setenv(ATTENTION_ENV, "bogus")
    with pytest.raises(ConfigError, match=ATTENTION_ENV):
        attention_backend("auto", "cpu")


def test_auto_attention_on_cuda_never_runs_eager_flex(monkeypatch):
    """Issue 23, finding 4: without flash-attn, ``auto`` on CUDA resolved to ``flex``, which verl's engine ran eagerly
    (every score materialised: tens of GB per layer at the recipes' token budgets). It is now PyTorch's varlen_attn
    where torch has it, else ``segmented``."""
    monkeypatch.delenv(ATTENTION_ENV, raising=False)
    for implementation, expected in (("flash_attn", "flash"), ("torch_varlen", "flash"), (None, "segmented")):
        monkeypatch.setattr(
            attention, "flash_varlen_implementation", lambda implementation=implementation: implementation
        )
        assert attention_backend("auto", "cuda") == expected
    assert attention_backend("flex", "cuda") == "flex"  # asked for by name: the engine compiles it
