"""The recipes as verl trainer configs: they compose over verl's own PPO trainer config, pass verl's checks and
differ from each other only where they should; the ``mem1`` section reads back as MEM1's config."""

from __future__ import annotations

import pytest

from tests.training.verl_plugin.common import compose
from verl_mem1.training.verl_plugin import AGENT_NAME, PLUGIN_MODULE


def test_qa_recipe_composes_over_verls_ppo_trainer():
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    from verl_mem1.tasks import rewards

    cfg = compose("qa")
    OmegaConf.resolve(cfg)
    rollout = cfg.actor_rollout_ref.rollout
    assert rollout.agent.default_agent_loop == AGENT_NAME and rollout.agent.agent_loop_config_path.endswith(
        "agent_loops.yaml"
    )
    assert cfg.actor_rollout_ref.model.external_lib == PLUGIN_MODULE == cfg.critic.model.external_lib
    assert cfg.reward.custom_reward_function.path == "pkg://verl_mem1.tasks.rewards"
    assert get_custom_reward_fn(cfg).args[0] is rewards.compute_score
    assert cfg.algorithm.adv_estimator == "grpo" and rollout.n == 5 and rollout.calculate_log_probs
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen2.5-7B-Instruct"
    assert (rollout.prompt_length, rollout.response_length) == (4096, 8192)  # interpolated from data.*
    assert cfg.actor_rollout_ref.ref.strategy == "fsdp2" and cfg.actor_rollout_ref.model.use_remove_padding
    assert cfg.mem1.retriever_url == "http://127.0.0.1:8000" and cfg.mem1.layout == "packed"
    # verl's own checks (main_ppo runs them before starting Ray) and dataclasses accept the values
    with pytest.warns(UserWarning, match="Disabled critic"):
        use_critic = need_critic(cfg)
    assert not use_critic  # GRPO: no critic (switching to gae turns the recipe's critic section on)
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=use_critic)
    assert omega_conf_to_dataclass(rollout).agent.default_agent_loop == AGENT_NAME
    assert omega_conf_to_dataclass(cfg.actor_rollout_ref.actor).engine.strategy == "fsdp2"


def flat(d: dict, prefix: str = "") -> dict:
    """A nested config as {"a.b.c": value}."""
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_websearch_recipe_is_qa_with_another_environment():
    from omegaconf import OmegaConf

    qa = OmegaConf.to_container(compose("qa"), resolve=True)
    web = OmegaConf.to_container(compose("websearch"), resolve=True)

    qa, web = flat(qa), flat(web)
    differ = {k for k in qa.keys() | web.keys() if qa.get(k) != web.get(k)}
    assert differ == {
        "mem1.retriever_url",
        "mem1.retriever_timeout_s",
        "data.train_files",
        "data.val_files",
        "actor_rollout_ref.rollout.agent.num_workers",
        "trainer.experiment_name",
        "trainer.default_local_dir",
        "actor_rollout_ref.rollout.trace.experiment_name",  # interpolates trainer.experiment_name
    }
    assert web["mem1.retriever_url"] == "http://127.0.0.1:8002"


def test_webshop_recipe_is_qa_with_the_shop_as_environment():
    from omegaconf import OmegaConf

    from verl_mem1.config import Mem1Config

    qa = flat(OmegaConf.to_container(compose("qa"), resolve=True))
    shop = flat(OmegaConf.to_container(compose("webshop"), resolve=True))
    differ = {k for k in qa.keys() | shop.keys() if qa.get(k) != shop.get(k)}
    assert differ == {
        "mem1.env",
        "mem1.webshop_url",
        "mem1.max_turns",
        "mem1.max_observation_tokens",
        "data.train_files",
        "data.val_files",
        "data.max_response_length",
        "actor_rollout_ref.rollout.response_length",  # these two interpolate data.max_response_length
        "distillation.teacher_models.teacher_model.inference.response_length",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu",
        "trainer.experiment_name",
        "trainer.default_local_dir",
        "actor_rollout_ref.rollout.trace.experiment_name",
    }, differ
    mem1 = Mem1Config.from_trainer_config(compose("webshop"))
    assert mem1.env == "webshop" and mem1.webshop_url.endswith(":8003") and mem1.max_turns == 15
    with pytest.raises(ValueError, match="mem1.env=webshop needs in_loop"):
        Mem1Config.from_trainer_config(compose("webshop"), reward="verl")
    with pytest.raises(ValueError, match="does not fit"):
        Mem1Config.from_trainer_config(compose("webshop"), tags="paper")


def test_smol_qa_experiment_is_the_cpu_platform_plus_a_recipe_that_can_learn():
    """``make learn``'s RL run: the qa recipe, the CPU platform, and each choice the diagnosis of the run that did not
    learn asked for; verl's own checks accept it."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from verl_mem1.config import Mem1Config

    cpu = OmegaConf.to_container(compose("qa", ["+platform=cpu"]), resolve=True)
    cfg = compose("qa", ["+experiment=smol_qa"])
    OmegaConf.resolve(cfg)
    smol = OmegaConf.to_container(cfg)
    assert smol["trainer"]["device"] == "cpu" and smol["actor_rollout_ref"]["rollout"]["name"] == "mem1_hf"
    assert smol["ray_kwargs"] == cpu["ray_kwargs"]  # the platform comes with the experiment
    actor = cfg.actor_rollout_ref.actor
    assert actor.ppo_mini_batch_size == cfg.data.train_batch_size and actor.ppo_epochs == 1  # one step a batch
    assert actor.use_kl_loss and actor.kl_loss_coef > 0 and need_reference_policy(cfg)  # KL to the SFT policy
    assert "hf_model" in actor.checkpoint.save_contents  # a Hugging Face folder `mem1 eval` loads
    assert cfg.actor_rollout_ref.model.enable_gradient_checkpointing  # fits 24 GB (OOM at step 3 without it)
    # the rollout's exact log-probs stand for the old policy's: no recomputing forward pass
    assert cfg.algorithm.rollout_correction.bypass_mode and cfg.actor_rollout_ref.rollout.calculate_log_probs
    assert cfg.reward.custom_reward_function.reward_kwargs.metric == "em"  # the reported metric
    mem1 = Mem1Config.from_trainer_config(cfg)
    assert mem1.invalid_action_penalty > 0 and mem1.max_turns == 4  # learn_smollm2.sh composes with --max-turns 4
    # 0.7: fewer broken turns than MEM1's 1.0 and a third of the groups with an EM spread (benchmarks/grpo_signal.py)
    assert cfg.actor_rollout_ref.rollout.n >= 4 and cfg.actor_rollout_ref.rollout.temperature == 0.7
    with pytest.warns(UserWarning, match="Disabled critic"):
        use_critic = need_critic(cfg)
    validate_config(config=cfg, use_reference_policy=True, use_critic=use_critic)


def test_make_learn_runs_verls_trainer_on_the_smol_qa_experiment():
    from tests.training.verl_plugin.common import ROOT

    script = (ROOT / "benchmarks" / "learn_smollm2.sh").read_text()
    assert "-m verl_mem1.train" in script and "+experiment=smol_qa" in script and "VERL_PLATFORM=cpu" in script
    assert "$MEM1 train" not in script  # not the single-machine trainer
    assert "--max-turns 4" in script and "$MEM1 compare" in script


@pytest.mark.parametrize("recipe", ["qa", "webshop"])
def test_cpu_platform_engines_compute_in_fp32_on_cpu(recipe):
    """verl's FSDP engines cast parameters and autocast to ``mixed_precision.param_dtype``, bf16 when it is unset (its
    default): emulated on CPUs without AMX at several times fp32's cost (the RL probe's update ran in bf16 kernels),
    and not the rollout's exact fp32 log-probs. The CPU platform sets fp32 for the actor, reference and critic."""
    import inspect

    import torch
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.torch_dtypes import PrecisionType
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    build = inspect.getsource(FSDPEngine._build_fsdp_module)
    # what verl does with the setting (watched: the CPU platform relies on it)
    assert 'mixed_precision_config.get("param_dtype", "bf16")' in build
    assert "self._autocast_dtype = param_dtype" in build
    cfg = compose(recipe, ["+platform=cpu"])
    OmegaConf.resolve(cfg)
    engines = {
        "actor": cfg.actor_rollout_ref.actor.fsdp_config,
        "ref": cfg.actor_rollout_ref.ref.fsdp_config,
        "critic": cfg.critic.fsdp,
    }
    for name, engine in engines.items():
        mixed = omega_conf_to_dataclass(engine).mixed_precision
        assert mixed is not None, name
        for key in ("param_dtype", "reduce_dtype", "buffer_dtype"):
            assert PrecisionType.to_dtype(mixed.get(key, "bf16")) == torch.float32, (name, key)
    assert cfg.actor_rollout_ref.ref.fsdp_config.param_offload  # verl's default for the reference, kept


# What the CPU platform (recipes/platform/cpu.yaml) may change in a 7B recipe: sizes (batch, lengths, token budgets,
# group size, workers, steps, and the learning rate that goes with them), the device and the precision, and the two
# code-path switches that the e2e runs turn back on (test_main_ppo_on_cpu.RECIPE_SWITCHES). Anything else differing
# means the CPU runs no longer exercise what a cluster run of the recipe executes.
CPU_SIZE_KEYS = {
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu", "actor_rollout_ref.actor.ppo_mini_batch_size",
    "actor_rollout_ref.actor.rollout_n", "actor_rollout_ref.ref.rollout_n", "actor_rollout_ref.rollout.n",
    "actor_rollout_ref.rollout.agent.num_workers", "actor_rollout_ref.rollout.prompt_length",
    "actor_rollout_ref.rollout.response_length", "critic.forward_max_token_len_per_gpu",
    "critic.ppo_max_token_len_per_gpu", "critic.ppo_mini_batch_size", "critic.rollout_n",
    "data.dataloader_num_workers", "data.max_prompt_length", "data.max_response_length", "data.train_batch_size",
    "distillation.teacher_models.teacher_model.inference.prompt_length",
    "distillation.teacher_models.teacher_model.inference.response_length", "mem1.max_new_tokens",
    "mem1.max_observation_tokens", "mem1.max_turns", "reward.num_workers", "trainer.save_freq", "trainer.test_freq",
    "trainer.total_epochs", "trainer.total_training_steps",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units", "actor_rollout_ref.actor.optim.lr",
    "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio",
}  # fmt: skip
CPU_DEVICE_PREFIXES = (
    "trainer.device", "trainer.n_gpus_per_node", "actor_rollout_ref.rollout.n_gpus_per_node", "ray_kwargs.ray_init.",
    "actor_rollout_ref.rollout.name", "distillation.teacher_models.teacher_model.inference.name",
    "actor_rollout_ref.rollout.free_cache_engine", "actor_rollout_ref.model.override_config.attn_implementation",
    "critic.model.override_config.attn_implementation",
)  # fmt: skip
CPU_PRECISION_SUFFIXES = (".dtype", ".mixed_precision.param_dtype", ".mixed_precision.reduce_dtype",
                          ".mixed_precision.buffer_dtype")  # fmt: skip


@pytest.mark.parametrize("recipe", ["qa", "webshop"])
def test_cpu_runs_are_the_7b_recipe_at_reduced_size_on_cpu(recipe):
    """The CPU e2e runs (``+platform=cpu``, test_main_ppo_on_cpu.py) stand for the 7B recipe only if the platform
    changes nothing but sizes, device and precision, plus the switches those runs turn back on."""
    from omegaconf import OmegaConf

    from tests.training.verl_plugin.test_main_ppo_on_cpu import RECIPE_SWITCHES

    gpu = flat(OmegaConf.to_container(compose(recipe), resolve=True))
    cpu = flat(OmegaConf.to_container(compose(recipe, ["+platform=cpu"]), resolve=True))
    changed = {k for k in set(gpu) | set(cpu) if gpu.get(k, "<absent>") != cpu.get(k, "<absent>")}
    # the on/off switches (kl_loss_coef is a setting the e2e runs choose, not one the platform changes)
    switches = dict(item.partition("=")[::2] for item in RECIPE_SWITCHES if item.endswith("=true"))
    switched_back = set(switches)
    other = {
        k
        for k in changed - CPU_SIZE_KEYS - switched_back
        if not k.startswith(CPU_DEVICE_PREFIXES) and not k.endswith(CPU_PRECISION_SUFFIXES)
    }
    assert other == set(), "the CPU platform changes a 7B recipe's code path: " + ", ".join(sorted(other))
    for key, value in switches.items():  # each switch is the 7B recipe's own value, which the platform turned off
        assert str(gpu[key]).lower() == value and str(cpu[key]).lower() != value, (key, gpu[key], cpu[key])
    assert cpu["algorithm.adv_estimator"] == gpu["algorithm.adv_estimator"] and cpu["mem1.attention"] == "auto"
    assert cpu["actor_rollout_ref.ref.fsdp_config.param_offload"] is True  # the 7B reference's offload, kept
