"""``python -m verl_mem1.train [--config-name qa] [overrides]``: verl's own trainer (``main_ppo``) on a shipped recipe.

An ``@hydra.main`` entry point over the recipes inside the package (``pkg://verl_mem1.recipes``), for clusters:
``ray job submit -- python -m verl_mem1.train --config-name qa trainer.nnodes=2 ...`` needs no source tree on the
workers, only ``verl-mem1`` installed. The composed config is checked first (``verl_plugin/preflight.py``: data
rows, TransferQueue, vLLM, the MEM1 engines, the environment server), then goes to verl's unmodified ``main_ppo`` (its
validation, then its v1 or legacy task runner). ``mem1 train`` runs the same on one machine, after
``single_machine.prepare`` has resolved what a laptop lacks (a model, tasks, an environment server).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra

if TYPE_CHECKING:
    from omegaconf import DictConfig

AGENT_LOOPS_KEY = "actor_rollout_ref.rollout.agent.agent_loop_config_path"


def with_packaged_agent_loops(cfg: DictConfig) -> DictConfig:
    """Point ``agent_loop_config_path`` at the packaged ``agent_loops.yaml`` when the configured path (relative to
    the repository root in the recipes) is not a file here: a wheel install, or a job started elsewhere."""
    from importlib.resources import files

    from omegaconf import OmegaConf, open_dict

    configured = OmegaConf.select(cfg, AGENT_LOOPS_KEY)
    if configured and Path(str(configured)).expanduser().is_file():
        return cfg
    with open_dict(cfg):
        OmegaConf.update(cfg, AGENT_LOOPS_KEY, str(files("verl_mem1.recipes") / "agent_loops.yaml"))
    return cfg


def start_configured_servers(cfg: Any) -> dict[str, str]:
    """Start the recipe's ``mem1_servers`` (``mem1 serve`` command lines) on the cluster and point the ``mem1`` URLs
    at them; returns ``{mem1 key: url}``. The trainer's own ``ray.init`` follows, so a connection made here is closed
    again (the detached actors stay on the cluster)."""
    from omegaconf import OmegaConf, open_dict

    commands = OmegaConf.select(cfg, "mem1_servers", default=None) or []
    if not commands:
        return {}
    import ray

    from env_servers.on_ray import serve_on_ray
    from verl_mem1.envs import url_key_of_server

    connected_here = not ray.is_initialized()
    urls: dict[str, str] = {}
    for command in commands:
        argv = shlex.split(str(command))
        if not argv:
            raise ValueError("mem1_servers: an empty command")
        try:
            key = url_key_of_server(argv[0])
        except ValueError as exc:
            raise ValueError(
                f"mem1_servers: {command!r} is not a `mem1 serve` command of an environment ({exc})"
            ) from None
        if key in urls:
            raise ValueError(f"mem1_servers: two servers for mem1.{key}")
        urls[key] = serve_on_ray(argv)
        print(f"mem1 serve {command}: {urls[key]} (mem1.{key})")
    if connected_here:
        ray.shutdown()
    with open_dict(cfg):
        for key, url in urls.items():
            OmegaConf.update(cfg, f"mem1.{key}", url)
    return urls


def run_main_ppo(cfg: DictConfig) -> None:
    """Check the composed config, then run verl's ``main_ppo`` body on it."""
    from verl.trainer.main_ppo import main as verl_main

    from verl_mem1.training.verl_plugin.preflight import check_trainer_config

    cfg = with_packaged_agent_loops(cfg)
    start_configured_servers(cfg)  # the recipe's mem1_servers, as Ray actors on the cluster
    check_trainer_config(cfg)
    verl_main.__wrapped__(cfg)  # main_ppo's body, on our composed config


def train_on_this_machine(cfg: DictConfig) -> None:
    """``mem1 train``: resolve the recipe's single-machine placeholders (``single_machine.py``: the tiny model, tasks
    under the run folder, the bundled environment served for the run), then verl's trainer."""
    import contextlib

    from verl_mem1.single_machine import prepare

    with contextlib.ExitStack() as stack:
        prepare(cfg, stack)
        run_main_ppo(cfg)


@hydra.main(config_path="pkg://verl_mem1.recipes", config_name="qa", version_base=None)
def main(cfg: DictConfig) -> None:
    run_main_ppo(cfg)


if __name__ == "__main__":
    main()
