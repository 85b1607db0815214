"""A wheel install is complete: the recipes (found by Hydra as ``pkg://verl_mem1.recipes``), the agent-loop file,
the bundled data and the WebShop subset all ship inside it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_the_wheel_ships_recipes_and_data(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=REPO,
        check=True,
        timeout=600,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("verl_mem1-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {str(path.relative_to(REPO / "recipes")) for path in (REPO / "recipes").rglob("*.yaml")}
    assert recipes >= {"qa.yaml", "webshop.yaml", "agent_loops.yaml", "experiment/tiny.yaml", "platform/cpu.yaml"}
    assert {f"verl_mem1/recipes/{name}" for name in recipes} <= names
    assert "verl_mem1/recipes/__init__.py" in names and "verl_mem1/single_machine.py" in names
    assert {"env_servers/webshop/bundled/documents.jsonl", "env_servers/webshop/bundled/README.md"} <= names
    assert any(n.startswith("verl_mem1/data/hotpotqa/") for n in names)
    assert not any(n.startswith(("tests/", "recipes/", "benchmarks/")) for n in names), "no stray top-level packages"
