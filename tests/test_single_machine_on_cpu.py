"""What `mem1 train` prepares before verl's trainer starts (verl_mem1/single_machine.py): the tiny model, tasks
written under the run folder, the bundled environment served for the run, verl's metrics log in the run folder. The
whole `mem1 train` on verl's trainer runs in tests/training/verl_plugin/test_main_ppo_on_cpu.py."""

from __future__ import annotations

import contextlib
import os

import httpx
import pyarrow.parquet as pq
import pytest

from verl_mem1.config import ConfigError, Mem1Config
from verl_mem1.recipes import compose_config
from verl_mem1.records import load_tasks
from verl_mem1.single_machine import SingleMachineConfig, prepare, prepare_tasks


def _tiny(tmp_path, *overrides):
    return compose_config("qa", ["+experiment=tiny", f"trainer.default_local_dir={tmp_path / 'run'}", *overrides])


def test_webshop_placeholders_become_the_bundled_shop_its_goals_and_the_metrics_log(tmp_path, monkeypatch):
    monkeypatch.delenv("VERL_FILE_LOGGER_PATH", raising=False)
    cfg = _tiny(tmp_path, "mem1.env=webshop", "single_machine.train_goals=10:14", "single_machine.val_goals=0:2")
    model_path = cfg.actor_rollout_ref.model.path
    with contextlib.ExitStack() as stack:
        prepare(cfg, stack)
        url = cfg.mem1.webshop_url
        assert url.startswith("http://127.0.0.1:") and httpx.get(f"{url}/health").status_code == 200
        assert cfg.mem1.retriever_url == "auto"  # only the environment the run plays is served
    with pytest.raises(httpx.TransportError):  # served for the run only
        httpx.get(f"{url}/health", timeout=2)
    assert model_path == "tiny" and (tmp_path / "run" / "tiny-model" / "config.json").is_file()
    assert cfg.actor_rollout_ref.model.path == str(tmp_path / "run" / "tiny-model")
    train, val = load_tasks(cfg.data.train_files), load_tasks(cfg.data.val_files)
    assert [len(train), len(val)] == [4, 2]
    assert train[0].extra_info["tags"] == "webshop" and train[0].extra_info["max_turns"] == cfg.mem1.max_turns
    rows = pq.read_table(cfg.data.train_files).to_pylist()
    assert {r["agent_name"] for r in rows} == {cfg.actor_rollout_ref.rollout.agent.default_agent_loop}
    assert os.environ["VERL_FILE_LOGGER_PATH"] == str(tmp_path / "run" / "metrics.jsonl")


def test_qa_tasks_are_composed_from_the_single_machine_section_and_named_files_are_kept(tmp_path):
    cfg = _tiny(tmp_path, "single_machine.objectives=2", "single_machine.val_source=hotpotqa-train")
    named = tmp_path / "mine.parquet"
    cfg.data.val_files = str(named)
    prepare_tasks(cfg, Mem1Config.from_trainer_config(cfg), SingleMachineConfig.from_trainer_config(cfg))
    assert cfg.data.val_files == str(named), "a task file the recipe names is used as it is"
    train = load_tasks(cfg.data.train_files)
    assert len(train) == 150 and {t.num_objectives for t in train} == {2}  # 300 bundled questions, 2 a task
    assert train[0].extra_info["tags"] == "paper"


def test_a_bad_single_machine_section_fails_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="single_machine.objectives=0"), contextlib.ExitStack() as stack:
        prepare(_tiny(tmp_path, "single_machine.objectives=0"), stack)
    assert not (tmp_path / "run").exists(), "nothing written before the check"


def test_mem1_train_fails_at_start_up_naming_the_key_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from verl_mem1.cli import main
    from verl_mem1.cli.train import with_default_experiment

    monkeypatch.chdir(tmp_path)
    assert main(["train", "mem1.topk=0", f"trainer.default_local_dir={tmp_path / 'run'}"]) == 2
    assert "mem1 train: error: mem1.topk=0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # the tiny experiment is the default unless the command names a recipe or an experiment itself
    assert with_default_experiment(["a=1"]) == ["+experiment=tiny", "a=1"]
    for named in (["--config-name", "webshop"], ["-cn=qa"], ["+experiment=smol_qa"]):
        assert with_default_experiment(named) == named
