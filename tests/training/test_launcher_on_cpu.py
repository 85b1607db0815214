"""``python -m verl_mem1.train``: verl's trainer on a shipped recipe, through an ``@hydra.main`` entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_launcher_composes_a_shipped_recipe(tmp_path):
    """--cfg job prints the composed qa recipe (verl's keys included) without starting anything, from any folder."""
    result = subprocess.run(
        [sys.executable, "-m", "verl_mem1.train", "--cfg", "job", "mem1.topk=7"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "topk: 7" in result.stdout and "adv_estimator: grpo" in result.stdout
    assert "agent_loop_config_path" in result.stdout


def test_launcher_stops_before_ray_on_a_bad_config(tmp_path):
    """The start-up checks run before verl's main_ppo: a missing data file ends the run, Ray never started."""
    result = subprocess.run(
        [sys.executable, "-m", "verl_mem1.train", "data.train_files=/nowhere/train.parquet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode != 0
    assert "PreflightError" in result.stderr and "/nowhere/train.parquet does not exist" in result.stderr
    assert "ray init kwargs" not in result.stdout


def test_packaged_agent_loops_replace_a_missing_path(tmp_path):
    from omegaconf import OmegaConf

    from verl_mem1.recipes import compose_config
    from verl_mem1.train import AGENT_LOOPS_KEY, with_packaged_agent_loops

    cfg = compose_config("qa", [f"{AGENT_LOOPS_KEY}={tmp_path / 'missing.yaml'}"])
    path = Path(OmegaConf.select(with_packaged_agent_loops(cfg), AGENT_LOOPS_KEY))
    assert path.name == "agent_loops.yaml" and path.is_file() and "mem1_agent" in path.read_text()
    mine = tmp_path / "mine.yaml"
    mine.write_text("[]\n")
    cfg = compose_config("qa", [f"{AGENT_LOOPS_KEY}={mine}"])
    assert OmegaConf.select(with_packaged_agent_loops(cfg), AGENT_LOOPS_KEY) == str(mine)
