"""Start-up checks of ``python -m verl_mem1.train`` on the shipped recipes: each failure a cluster job would meet
late (or never notice) is caught before Ray starts, with the key to change; a correct config passes."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from tests.training.verl_plugin.common import compose
from verl_mem1.training.verl_plugin import preflight
from verl_mem1.training.verl_plugin.preflight import PreflightError, check_trainer_config


@pytest.fixture
def tasks(tmp_path):
    """Write a parquet of ``n`` rows (what verl would read) and return its path."""

    def write(n: int, name: str = "train.parquet") -> str:
        path = tmp_path / name
        pd.DataFrame({"prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(n)]}).to_parquet(path)
        return str(path)

    return write


def qa(tasks, retrieval_url, *overrides: str, rows: int = 8, batch: int = 4):
    return compose(
        "qa",
        [
            f"data.train_files={tasks(rows)}",
            f"data.val_files={tasks(2, 'test.parquet')}",
            f"data.train_batch_size={batch}",
            f"mem1.retriever_url={retrieval_url}",
            *overrides,
        ],
    )


def test_a_correct_recipe_passes_every_check(tasks, retrieval_url):
    check_trainer_config(qa(tasks, retrieval_url))
    check_trainer_config(qa(tasks, retrieval_url, "algorithm.adv_estimator=gae"))  # the critic's engine too


def test_fewer_rows_than_one_batch_fail_before_verl_divides_by_zero(tasks, retrieval_url):
    with pytest.raises(PreflightError, match="hold 3 rows, fewer than data.train_batch_size=4"):
        check_trainer_config(qa(tasks, retrieval_url, rows=3))
    with pytest.raises(PreflightError, match="missing.parquet does not exist"):
        check_trainer_config(qa(tasks, retrieval_url, "data.train_files=/nowhere/missing.parquet"))


def test_sglang_is_refused_with_the_reason(tasks, retrieval_url):
    with pytest.raises(PreflightError, match="runs on vLLM only"):
        check_trainer_config(qa(tasks, retrieval_url, "actor_rollout_ref.rollout.name=sglang"))


def test_the_cpu_platform_needs_verl_to_be_on_it(tasks, retrieval_url, monkeypatch):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    with pytest.raises(PreflightError, match="set VERL_PLATFORM=cpu in the environment"):
        preflight.check_platform(qa(tasks, retrieval_url, "+platform=cpu"))
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    preflight.check_rollout_engine(qa(tasks, retrieval_url, "+platform=cpu"))  # mem1_hf stands in for vLLM
    preflight.check_platform(qa(tasks, retrieval_url, "+platform=cpu"))
    with pytest.raises(PreflightError, match="mem1_hf is the CPU rollout"):
        preflight.check_platform(qa(tasks, retrieval_url, "actor_rollout_ref.rollout.name=mem1_hf"))
    with pytest.raises(PreflightError, match="runtime_env.env_vars.VERL_PLATFORM must be cpu"):
        preflight.check_platform(
            qa(tasks, retrieval_url, "+platform=cpu", "ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM=cuda")
        )


def test_v1_trainer_needs_transfer_queue(tasks, retrieval_url, monkeypatch):
    import transfer_queue  # noqa: F401 - installed with the project (verl lists it only in an extra)

    monkeypatch.setitem(sys.modules, "transfer_queue", None)  # as if not installed: import raises ImportError
    with pytest.raises(PreflightError, match="needs the TransferQueue package"):
        check_trainer_config(qa(tasks, retrieval_url))
    check_trainer_config(qa(tasks, retrieval_url, "trainer.use_v1=false"))  # the legacy trainer does not


def test_engines_other_than_fsdp_are_refused(tasks, retrieval_url):
    with pytest.raises(PreflightError, match="not the MEM1 engine|has no language_model engine"):
        preflight.check_engines(qa(tasks, retrieval_url, "actor_rollout_ref.actor.strategy=megatron"))


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_a_recipe_that_does_not_select_the_mem1_engines_is_refused(tasks, retrieval_url, device, monkeypatch):
    """Without VERL_ENGINE_VENDOR=mem1 for the workers verl builds its stock engine (cuda) or none (cpu)."""
    monkeypatch.delenv("VERL_ENGINE_VENDOR", raising=False)
    drop = "~ray_kwargs.ray_init.runtime_env.env_vars.VERL_ENGINE_VENDOR"
    config = qa(tasks, retrieval_url, drop, f"trainer.device={device}")
    with pytest.raises(PreflightError, match="VERL_ENGINE_VENDOR=mem1"):
        preflight.check_engines(config)
    preflight.check_engines(qa(tasks, retrieval_url, f"trainer.device={device}"))


def test_an_environment_server_that_does_not_answer_fails_at_start(tasks, retrieval_url, monkeypatch):
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(PreflightError, match=r"retrieval server at http://127.0.0.1:9 \(mem1.retriever_url\)"):
        check_trainer_config(qa(tasks, retrieval_url, f"mem1.retriever_url={dead}"))
    monkeypatch.setenv(preflight.SKIP_ENV_CHECK, "1")
    check_trainer_config(qa(tasks, retrieval_url, f"mem1.retriever_url={dead}"))


def test_the_recipes_put_the_plugin_on_every_ray_worker_and_refill_failed_groups():
    from omegaconf import OmegaConf
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    for name in ("qa", "webshop", "websearch"):
        cfg = compose(name)
        assert cfg.trainer.v1.sampler.sync_refill_failed_groups is True
        # what main_ppo passes to ray.init: verl's defaults merged with the recipe's runtime_env
        runtime_env = OmegaConf.merge(get_ppo_ray_runtime_env(cfg), cfg.ray_kwargs.ray_init.runtime_env)
        assert runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES == "verl_mem1.training.verl_plugin"


def test_multi_node_runs_need_shared_absolute_paths_and_a_reachable_server(tasks, retrieval_url, tmp_path):
    """Each finding fails on one node too late or never (issue 23, finding 9); one node accepts them all."""
    from verl_mem1.training.verl_plugin.preflight import check_multi_node

    shared = f"trainer.default_local_dir={tmp_path / 'checkpoints'}"
    check_multi_node(qa(tasks, retrieval_url, "trainer.default_local_dir=checkpoints"))  # one node: fine
    with pytest.raises(PreflightError, match="trainer.default_local_dir=checkpoints is relative"):
        check_multi_node(qa(tasks, retrieval_url, "trainer.nnodes=2", "trainer.default_local_dir=checkpoints"))
    with pytest.raises(PreflightError, match="data.val_files=data/test.parquet is relative"):
        check_multi_node(qa(tasks, retrieval_url, "trainer.nnodes=2", shared, "data.val_files=data/test.parquet"))
    with pytest.raises(PreflightError, match="mem1.retriever_url=http://127.0.0.1:8000 is a loopback address"):
        check_multi_node(qa(tasks, "http://127.0.0.1:8000", "trainer.nnodes=2", shared))
    with pytest.raises(PreflightError, match="mem1.retriever_url=http://localhost:8000/retrieve is a loopback"):
        check_multi_node(qa(tasks, "http://localhost:8000/retrieve", "trainer.nnodes=2", shared))
    check_multi_node(
        qa(tasks, "http://10.0.0.5:8000", "trainer.nnodes=2", shared, "data.train_files=hdfs://x/t.parquet")
    )
