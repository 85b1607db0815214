"""What the verl plug-in tests share: verl's Hydra config tree over ``recipes/``, and the MEM1 agent loop
instantiated the way verl instantiates it."""

from __future__ import annotations

from pathlib import Path

from verl_mem1.training.verl_plugin import AGENT_NAME

ROOT = Path(__file__).resolve().parents[3]
RECIPES = ROOT / "recipes"
TOL = 1e-4
TEMPERATURE = 0.7


def compose(name: str, overrides: list[str] | None = None):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        return hydra_compose(config_name=name, overrides=overrides or [])


def agent_loop_entries():
    """recipes/agent_loops.yaml as ``AgentLoopWorker.__init__`` reads it (``OmegaConf.load``)."""
    from omegaconf import OmegaConf

    return list(OmegaConf.load(RECIPES / "agent_loops.yaml"))


def make_loop(trainer_config, server, tokenizer, entry=None, **constructor_kwargs):
    """Instantiate the loop exactly as ``AgentLoopWorker._run_agent_loop`` does (registry entry + hydra)."""
    import hydra
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry
    from verl.utils.dataset.rl_dataset import RLHFDataset

    return hydra.utils.instantiate(
        config=entry if entry is not None else {**_agent_loop_registry[AGENT_NAME], **constructor_kwargs},
        trainer_config=DictConfigWrap(config=trainer_config),
        server_manager=server,
        tokenizer=tokenizer,
        processor=None,
        hf_model_type="qwen2",
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(trainer_config.data),
        tools=ToolListWrap([]),
    )


def verl_sampling_params(config) -> dict:
    rollout = config.actor_rollout_ref.rollout  # what AgentLoopWorker.generate_sequences passes to run()
    return dict(
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        top_k=rollout.top_k,
        repetition_penalty=1.0,
        logprobs=rollout.calculate_log_probs,
    )


def row_kwargs(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("agent_name", "dummy_tensor")}
