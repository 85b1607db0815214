"""Loading the plug-in (``verl_mem1.training.verl_plugin``) the ways verl loads it: ``import verl`` with
``VERL_USE_EXTERNAL_MODULES``, the ``verl.plugins`` entry point, ``external_lib`` and ``recipes/agent_loops.yaml``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.training.verl_plugin.common import ROOT, agent_loop_entries, compose
from verl_mem1.training.verl_plugin import AGENT_NAME, PLUGIN_MODULE
from verl_mem1.training.verl_plugin.agent_loop import MEM1AgentLoop


def test_plugin_loads_the_way_verl_loads_it():
    """A fresh interpreter where verl imports the plug-in itself (VERL_USE_EXTERNAL_MODULES, at ``import verl``
    — the same point its ``verl.plugins`` entry points load) finds our loop and engines in verl's registries."""
    code = (
        "import json, verl\n"
        "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry as r\n"
        "from verl.workers.engine import EngineRegistry as e\n"
        "print(json.dumps({'loop': r.get('mem1_agent'), 'engines': [f'{c.__module__}.{c.__name__}' for c in ("
        "e.get_engine_cls('language_model', 'fsdp'), e.get_engine_cls('language_model', 'fsdp2'),"
        "e.get_engine_cls('value_model', 'fsdp2'))]}))\n"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": PLUGIN_MODULE, "VERL_USE_EXTERNAL_PLUGINS": "none"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["loop"] == {"_target_": "verl_mem1.training.verl_plugin.agent_loop.MEM1AgentLoop"}
    engine = "verl_mem1.training.verl_plugin.engine.MEM1FSDPEngine"
    assert found["engines"] == [engine + "WithLMHead", engine + "WithLMHead", engine + "WithValueHead"]


def test_entry_point_and_agent_loop_config_file():
    from importlib.metadata import entry_points

    import hydra
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.utils.import_utils import import_external_libs

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["verl.plugins"]
    assert table == {"mem1": PLUGIN_MODULE}
    import_external_libs(compose("qa").actor_rollout_ref.model.external_lib)  # what HFModelConfig does
    assert AGENT_NAME in _agent_loop_registry
    entries = agent_loop_entries()
    assert [e.name for e in entries] == [AGENT_NAME, "mem1_agent_full", "mem1_agent_per_turn"]
    for entry in entries:
        assert hydra.utils.get_class(entry._target_) is MEM1AgentLoop
    installed = [ep for ep in entry_points(group="verl.plugins") if ep.name == "mem1"]
    if installed:  # the package metadata is rebuilt by `pip install -e .` (make install)
        assert installed[0].value == PLUGIN_MODULE


_HEAVY = ("verl.workers.engine", "verl_mem1.training.verl_plugin.engine", "verl_mem1.training.verl_plugin.agent_loop")


def _fresh_interpreter(code: str) -> dict:
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": PLUGIN_MODULE, "VERL_USE_EXTERNAL_PLUGINS": "none"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_plugin_keeps_the_training_stack_out_of_processes_that_do_not_train_on_cpu():
    """vLLM's server and engine processes ``import verl`` (and with it the plug-in, through VERL_USE_EXTERNAL_MODULES
    or the entry point) and verl's rollout-replica module, never its engines: the plug-in must not pull verl's FSDP
    engines or the agent loop into them. They register once verl itself imports their modules."""
    code = (
        "import json, sys, verl, verl.workers.rollout.replica as replica\n"
        f"heavy = {_HEAVY!r}\n"
        "light = {'plugin': 'verl_mem1.training.verl_plugin' in sys.modules,"
        " 'heavy': [m for m in heavy if m in sys.modules],"
        " 'mem1_hf': 'mem1_hf' in replica.RolloutReplicaRegistry._registry}\n"
        "import verl.workers.engine as engine\n"
        "cls = engine.EngineRegistry.get_engine_cls('language_model', 'fsdp2')\n"
        "print(json.dumps({**light, 'engine': cls.__module__ + '.' + cls.__name__}))\n"
    )
    found = _fresh_interpreter(code)
    assert found["plugin"] and found["mem1_hf"]
    assert found["heavy"] == []
    assert found["engine"] == "verl_mem1.training.verl_plugin.engine.MEM1FSDPEngineWithLMHead"


def test_verl_vllm_server_module_imports_with_the_plugin_set():
    """The GPU side of the test above: verl's own vLLM server module, imported with the plug-in set as a cluster run
    sets it (``recipes/cluster.yaml``), loads neither the FSDP engines nor the agent loop. Needs vLLM."""
    pytest.importorskip("vllm")
    found = _fresh_interpreter(
        "import json, sys, verl.workers.rollout.vllm_rollout.vllm_async_server\n"
        f"print(json.dumps({{'heavy': [m for m in {_HEAVY!r} if m in sys.modules]}}))\n"
    )
    assert found["heavy"] == []
