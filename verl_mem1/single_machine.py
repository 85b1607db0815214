"""What ``mem1 train`` prepares on one machine before verl's own trainer starts: a model, tasks, an environment server.

A cluster recipe names all three (a model path, verl RL parquet files, the URL of a running ``mem1 serve``); a
laptop run should need none of them. Three placeholders in the composed config are resolved here, then the config
goes to ``main_ppo`` like any other (``verl_mem1.train.run_main_ppo``):

- ``actor_rollout_ref.model.path=tiny``: a random tiny Qwen2 (real Qwen2.5 tokenizer) is written under the run folder;
- ``data.train_files``/``data.val_files`` null: tasks are written under the run folder, composed from the bundled
  HotpotQA questions (``single_machine.objectives`` per task) or, for ``mem1.env=webshop``, taken from the bundled
  shop's goals;
- ``trainer.logger`` with ``file``: verl's metrics JSONL in the run folder, for ``mem1 curve``;
- ``mem1.retriever_url``/``mem1.webshop_url`` ``auto``: the bundled server (HotpotQA BM25 retriever, 100-product
  WebShop) is served on loopback for the run, from this process.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from verl_mem1.config import AUTO, ConfigError, Mem1Config
from verl_mem1.envs import env_spec

if TYPE_CHECKING:
    from omegaconf import DictConfig

TINY_MODEL = "tiny"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class SingleMachineConfig:
    """The recipe's ``single_machine:`` section (``recipes/experiment/tiny.yaml``): where tasks come from when
    ``data.train_files``/``data.val_files`` are null. Read by ``mem1 train`` only."""

    objectives: int = 1  # questions per composed QA task
    train_source: str = "hotpotqa-train"  # question source of training tasks (bundled name or KIND:PATH)
    val_source: str = "hotpotqa-dev"  # question source of validation tasks
    train_goals: str = "50:"  # bundled WebShop goals START:STOP trained on (mem1.env=webshop)
    val_goals: str = "0:50"  # bundled WebShop goals validated on
    seed: int = 0  # seed of task composition

    def __post_init__(self) -> None:
        if isinstance(self.objectives, bool) or not isinstance(self.objectives, int) or self.objectives < 1:
            raise ConfigError(f"single_machine.objectives={self.objectives!r}: expected an integer >= 1")

    @classmethod
    def from_trainer_config(cls, cfg: Any) -> SingleMachineConfig:
        from omegaconf import OmegaConf

        section = OmegaConf.select(cfg, "single_machine", default=None)
        values = OmegaConf.to_container(section, resolve=True) if section is not None else {}
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown single_machine keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


def run_dir(cfg: DictConfig) -> Path:
    """The run folder (``trainer.default_local_dir``): checkpoints, and what is prepared here."""
    return Path(str(cfg.trainer.default_local_dir)).expanduser().resolve()


def prepare_model(cfg: DictConfig) -> None:
    """Write the tiny model when the recipe asks for ``tiny`` (once per run folder) and point the config at it."""
    from omegaconf import OmegaConf, open_dict

    if OmegaConf.select(cfg, "actor_rollout_ref.model.path") != TINY_MODEL:
        return
    from verl_mem1.tiny_model import build_tiny_model

    model_dir = run_dir(cfg) / "tiny-model"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, seed=0)
        print(f"wrote the tiny model to {model_dir}")
    with open_dict(cfg):
        cfg.actor_rollout_ref.model.path = str(model_dir)


def _write_split(cfg: DictConfig, mem1: Mem1Config, local: SingleMachineConfig, split: str) -> Path:
    from verl_mem1.rollout.configure import tag_set_for
    from verl_mem1.tasks.compose import write_tasks_parquet

    agent_name = cfg.actor_rollout_ref.rollout.agent.default_agent_loop
    out = run_dir(cfg) / "data" / f"{split}.parquet"
    if env_spec(mem1.env).scores_episodes:  # WebShop: the bundled shop's goals
        from env_servers.webshop.data import load_catalog
        from verl_mem1.tasks.webshop import parse_goal_range, webshop_rows

        goals = load_catalog(None, None, seed=local.seed).goals
        indices = parse_goal_range(local.train_goals if split == "train" else local.val_goals, len(goals))
        rows = webshop_rows(goals, indices, split=split, max_turns=mem1.max_turns, agent_name=agent_name)
        what = f"WebShop goals {indices.start}:{indices.stop}"
    else:
        from verl_mem1.tasks.compose import compose_tasks
        from verl_mem1.tasks.sources import load_source

        source = local.train_source if split == "train" else local.val_source
        rows = compose_tasks(
            [load_source(source)],
            objectives=local.objectives,
            count=None,
            seed=local.seed,
            tags=tag_set_for(mem1),
            max_turns=mem1.max_turns,
            split=split,
            agent_name=agent_name,
        )
        what = f"{local.objectives}-objective tasks from {source}"
    write_tasks_parquet(rows, out)
    print(f"wrote {len(rows)} {split} {what} to {out}")
    return out


def prepare_tasks(cfg: DictConfig, mem1: Mem1Config, local: SingleMachineConfig) -> None:
    """Write the tasks of each split whose ``data.<split>_files`` is null and point the config at them."""
    from omegaconf import open_dict

    for split in SPLITS:
        if cfg.data.get(f"{split}_files") is None:
            path = _write_split(cfg, mem1, local, split)
            with open_dict(cfg):
                cfg.data[f"{split}_files"] = str(path)


def serve_environment(cfg: DictConfig, mem1: Mem1Config, stack: contextlib.ExitStack) -> None:
    """Serve the bundled environment for the life of ``stack`` when its URL is ``auto``, and point the config at it
    (the agent-loop workers reach it on loopback: one machine)."""
    from omegaconf import open_dict

    from env_servers.bundled import serve_bundled

    spec = env_spec(mem1.env)
    if getattr(mem1, spec.url_key) != AUTO:
        return
    url = serve_bundled(spec.servers[0], stack, run_dir(cfg) / "environment")
    with open_dict(cfg):
        cfg.mem1[spec.url_key] = url


def metrics_log(cfg: DictConfig) -> Path | None:
    """With verl's ``file`` logger, its JSONL goes to ``<run folder>/metrics.jsonl`` (``mem1 curve`` reads it there)
    unless ``VERL_FILE_LOGGER_PATH`` says otherwise; set before ``ray.init``, so verl's task runner inherits it."""
    import os

    if "file" not in list(cfg.trainer.get("logger") or []):
        return None
    path = Path(os.environ.setdefault("VERL_FILE_LOGGER_PATH", str(run_dir(cfg) / "metrics.jsonl")))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def prepare(cfg: DictConfig, stack: contextlib.ExitStack) -> None:
    """Resolve the model, tasks and environment placeholders of ``cfg`` in place (servers live as long as
    ``stack``), and place verl's metrics log. A bad ``mem1:`` or ``single_machine:`` value fails first, before
    anything is written."""
    mem1 = Mem1Config.from_trainer_config(cfg)
    local = SingleMachineConfig.from_trainer_config(cfg)
    prepare_model(cfg)
    prepare_tasks(cfg, mem1, local)
    serve_environment(cfg, mem1, stack)
    metrics_log(cfg)
