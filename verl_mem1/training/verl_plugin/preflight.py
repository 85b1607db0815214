"""Start-up checks for verl's trainer on a MEM1 recipe: what would otherwise fail an hour into a cluster job, or
never fail and train wrongly, fails here, before Ray starts, with the key to change.

``python -m verl_mem1.train`` (and so ``make train-qa`` / ``make train-webshop``) runs ``check_trainer_config``
on the composed config before handing it to verl's ``main_ppo``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CPU_ROLLOUT = "mem1_hf"  # cpu_rollout.ROLLOUT_NAME (not imported: that module imports verl)
SKIP_ENV_CHECK = "MEM1_SKIP_ENV_CHECK"  # =1: do not ask the environment server for /health at start-up
# the device verl's engines run on (trainer.device) -> the (device, vendor) key EngineRegistry looks up there


class PreflightError(ValueError):
    """A trainer config that cannot run MEM1 correctly; the message names the key and the fix."""


def _select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def _uses_mem1(cfg: DictConfig) -> bool:
    return _select(cfg, "actor_rollout_ref.rollout.agent.default_agent_loop") == "mem1_agent" or "mem1" in cfg


def check_transfer_queue(cfg: DictConfig) -> None:
    """verl's v1 trainer (``trainer.use_v1``, its default) imports TransferQueue, which verl lists only in an extra."""
    if not _select(cfg, "trainer.use_v1", True):
        return
    try:
        importlib.import_module("transfer_queue")
    except ImportError as exc:
        raise PreflightError(
            f"trainer.use_v1=true runs verl's v1 trainer, which needs the TransferQueue package ({exc}); "
            "`pip install verl-mem1` installs it (or set trainer.use_v1=false for the legacy trainer)"
        ) from exc


def check_rollout_engine(cfg: DictConfig) -> None:
    """The MEM1 agent loop asks verl's server for the stop strings in the output (vLLM's
    ``include_stop_str_in_output``) and for token-id prompts; SGLang has neither as configured by verl 0.9. On CPU the
    plug-in's ``mem1_hf`` rollout stands in for vLLM."""
    name = _select(cfg, "actor_rollout_ref.rollout.name")
    if name not in ("vllm", CPU_ROLLOUT) and _uses_mem1(cfg):
        raise PreflightError(
            f"actor_rollout_ref.rollout.name={name}: the MEM1 agent loop runs on vLLM only (SGLang drops "
            "include_stop_str_in_output and skips tokenizer init); set actor_rollout_ref.rollout.name=vllm "
            f"({CPU_ROLLOUT} on CPU)"
        )


def check_platform(cfg: DictConfig) -> None:
    """``trainer.device=cpu`` needs verl's platform to be the plug-in's CPU platform in this process and on every
    worker (``VERL_PLATFORM=cpu``: verl decides the platform once, when its modules are imported), and the CPU
    rollout runs only there."""
    device = str(_select(cfg, "trainer.device", "cuda"))
    on_cpu = os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu"
    if device == "cpu" and not on_cpu:
        raise PreflightError(
            "trainer.device=cpu: set VERL_PLATFORM=cpu in the environment of the command (verl picks its platform "
            "when it is imported, before the config is read) and add +platform=cpu to the recipe"
        )
    if _select(cfg, "actor_rollout_ref.rollout.name") == CPU_ROLLOUT and device != "cpu":
        raise PreflightError(
            f"actor_rollout_ref.rollout.name={CPU_ROLLOUT} is the CPU rollout: use it with trainer.device=cpu "
            "(+platform=cpu), or rollout.name=vllm on GPUs"
        )
    if device == "cpu":
        workers_env = _select(cfg, "ray_kwargs.ray_init.runtime_env.env_vars", {}) or {}
        if str(workers_env.get("VERL_PLATFORM", "")).lower() != "cpu":
            raise PreflightError(
                "trainer.device=cpu: ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM must be cpu so that "
                "verl's workers use the CPU platform too (recipes/platform/cpu.yaml sets it)"
            )


def _row_count(path: str) -> int:
    import pyarrow.parquet as pq

    file = Path(path).expanduser()
    if not file.is_file():
        raise PreflightError(f"data file {path} does not exist (make train-qa / mem1 compose writes it)")
    if file.suffix != ".parquet":
        return -1  # another format verl reads: not counted here
    return int(pq.ParquetFile(file).metadata.num_rows)


def check_data(cfg: DictConfig) -> None:
    """Enough training rows for one batch: with fewer, verl computes 0 steps per epoch and divides by it."""
    files = _select(cfg, "data.train_files")
    if files is None:
        return
    files = [files] if isinstance(files, str) else list(files)
    counts = [_row_count(str(f)) for f in files]
    if any(c < 0 for c in counts):
        return
    rows, batch = sum(counts), int(_select(cfg, "data.train_batch_size"))
    if _select(cfg, "data.train_max_samples", -1) not in (None, -1):
        rows = min(rows, int(cfg.data.train_max_samples))
    if rows < batch:
        raise PreflightError(
            f"data.train_files hold {rows} rows, fewer than data.train_batch_size={batch}: not one training step fits "
            f"(verl would stop with a ZeroDivisionError); lower data.train_batch_size or compose more tasks"
        )
    val = _select(cfg, "data.val_files")
    if val is not None:
        for f in [val] if isinstance(val, str) else list(val):
            _row_count(str(f))


def check_engines(cfg: DictConfig) -> None:
    """The MEM1 engines are the ones verl will build for the actor (and the critic, under GAE) on the job's device;
    a stock engine would train packed samples under plain causal attention, silently."""
    plugin = importlib.import_module("verl_mem1.training.verl_plugin")  # raises, unlike verl's entry-point loader
    plugin.register()
    from verl.workers.engine.base import EngineRegistry

    from verl_mem1.training.verl_plugin.engine import ENGINES
    from verl_mem1.training.verl_plugin.fields import ENGINE_VENDOR, ENGINE_VENDOR_ENV

    device = str(_select(cfg, "trainer.device", "cuda"))
    roles = [("language_model", "actor_rollout_ref.actor.strategy")]
    if _select(cfg, "algorithm.adv_estimator") == "gae":
        roles.append(("value_model", "critic.strategy"))
    # what the workers will see: the recipe's Ray runtime env (recipes/cluster.yaml), else this process's environment
    workers_env = _select(cfg, "ray_kwargs.ray_init.runtime_env.env_vars", {}) or {}
    vendor = workers_env.get(ENGINE_VENDOR_ENV, os.environ.get(ENGINE_VENDOR_ENV))
    saved = {k: os.environ.get(k) for k in ("VERL_ENGINE_DEVICE", ENGINE_VENDOR_ENV)}
    try:
        os.environ["VERL_ENGINE_DEVICE"] = device
        if vendor:
            os.environ[ENGINE_VENDOR_ENV] = str(vendor)
        else:
            os.environ.pop(ENGINE_VENDOR_ENV, None)
        for model_type, key in roles:
            strategy = str(_select(cfg, key, "fsdp2"))
            try:
                found = EngineRegistry.get_engine_cls(model_type, strategy)
            except (AssertionError, NotImplementedError, KeyError, ValueError) as exc:  # verl asserts on a key
                raise PreflightError(
                    f"{key}={strategy}: verl has no {model_type} engine for it ({exc}); the MEM1 engines are "
                    f"selected by {ENGINE_VENDOR_ENV}={ENGINE_VENDOR} (recipes/cluster.yaml sets it)"
                ) from exc
            if not issubclass(found, ENGINES[model_type]):
                raise PreflightError(
                    f"{key}={strategy} on {device}: verl would build {found.__module__}.{found.__name__}, not the "
                    f"MEM1 engine; packed MEM1 samples would be trained under the wrong attention. Use fsdp/fsdp2, "
                    f"with {ENGINE_VENDOR_ENV}={ENGINE_VENDOR} in ray_kwargs.ray_init.runtime_env.env_vars "
                    "(recipes/cluster.yaml sets it)."
                )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_environment_server(cfg: DictConfig) -> None:
    """The retrieval / WebShop server answers ``/health`` (set ``MEM1_SKIP_ENV_CHECK=1`` where only the workers reach
    it)."""
    if os.environ.get(SKIP_ENV_CHECK) == "1" or "mem1" not in cfg:
        return
    import httpx

    from verl_mem1.config import Mem1Config
    from verl_mem1.envs import env_spec

    mem1 = Mem1Config.from_trainer_config(cfg)
    url = mem1.url().rstrip("/").removesuffix("/retrieve")
    if url == "auto":
        return  # the plug-in refuses it with its own message
    try:
        response = httpx.get(url + "/health", timeout=10.0)
    except httpx.HTTPError as exc:
        spec = env_spec(mem1.env)
        raise PreflightError(
            f"the {mem1.env} server at {url} (mem1.{spec.url_key}) does not answer: {exc!r}. Start it first "
            f"(`mem1 serve {spec.servers[0]} ...`), or set {SKIP_ENV_CHECK}=1 if only the cluster's workers can "
            "reach it"
        ) from exc
    if response.status_code != 200:
        raise PreflightError(f"the {mem1.env} server at {url} answered /health with {response.status_code}")


def _paths(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def check_multi_node(cfg: DictConfig) -> None:
    """With ``trainer.nnodes > 1`` the workers run on other machines: each resolves a relative path in its own Ray
    working directory (checkpoint shards scattered and lost, data absent: ``data/`` is git-ignored, so ``ray job
    submit --working-dir .`` ships none), and a loopback environment URL names each worker's own machine, where no
    server runs (verl then refills the failed groups forever: a stall, not an error)."""
    if int(_select(cfg, "trainer.nnodes", 1) or 1) <= 1:
        return
    keys = {"trainer.default_local_dir": _paths(_select(cfg, "trainer.default_local_dir"))}
    keys["data.train_files"] = _paths(_select(cfg, "data.train_files"))
    keys["data.val_files"] = _paths(_select(cfg, "data.val_files"))
    for key, paths in keys.items():
        for path in paths:
            if "://" not in path and not os.path.isabs(path):
                raise PreflightError(
                    f"{key}={path} is relative, and trainer.nnodes > 1: each node resolves it in its own Ray working "
                    "directory; give an absolute path on storage every node shares"
                )
    if "mem1" not in cfg:
        return
    from urllib.parse import urlsplit

    from env_servers.serve_options import LOOPBACK_HOSTS
    from verl_mem1.config import Mem1Config
    from verl_mem1.envs import env_spec

    mem1 = Mem1Config.from_trainer_config(cfg)
    host = urlsplit(mem1.url()).hostname or ""
    if host in LOOPBACK_HOSTS | {"0.0.0.0"}:  # as a URL, 0.0.0.0 names each worker's own machine too
        key = env_spec(mem1.env).url_key
        raise PreflightError(
            f"mem1.{key}={mem1.url()} is a loopback address, and trainer.nnodes > 1: agent-loop workers on the other "
            "nodes cannot reach it (verl would refill their failed groups forever); serve it on an address every "
            f"node reaches and set mem1.{key} to it"
        )


def check_trainer_config(cfg: DictConfig) -> None:
    """Every start-up check, cheapest first."""
    check_rollout_engine(cfg)
    check_multi_node(cfg)
    check_platform(cfg)
    check_transfer_queue(cfg)
    check_data(cfg)
    check_engines(cfg)
    check_environment_server(cfg)
