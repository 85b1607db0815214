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
from verl_mem1.training.verl_plugin.fields import ENGINE_VENDOR, ENGINE_VENDOR_ENV


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
    env = {
        **os.environ,
        "VERL_USE_EXTERNAL_MODULES": PLUGIN_MODULE,
        "VERL_USE_EXTERNAL_PLUGINS": "none",
        ENGINE_VENDOR_ENV: ENGINE_VENDOR,  # as recipes/cluster.yaml sets it for every worker
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["loop"] == {"_target_": "verl_mem1.training.verl_plugin.agent_loop.MEM1AgentLoop"}
    engine = "verl_mem1.training.verl_plugin.engine.MEM1FSDPEngine"
    assert found["engines"] == [engine + "WithLMHead", engine + "WithLMHead", engine + "WithValueHead"]
    assert compose("qa").ray_kwargs.ray_init.runtime_env.env_vars[ENGINE_VENDOR_ENV] == ENGINE_VENDOR


def test_a_rollout_server_process_registers_mem1_hf_without_a_warning():
    """A Ray rollout server loads its class from ``cpu_rollout`` first, whose import of verl's replica module fires the
    plug-in's hook mid-import: it used to log "the mem1_hf rollout is not available" (a circular ImportError) in every
    CPU run; the module now registers as its own import completes."""
    code = (
        "import json, verl\n"
        "from verl_mem1.training.verl_plugin import cpu_rollout\n"
        "from verl.workers.rollout import base\n"
        "from verl.workers.rollout.replica import RolloutReplicaRegistry as r\n"
        "worker = base._ROLLOUT_REGISTRY[('mem1_hf', 'async')]\n"
        "print(json.dumps({'replica': r.get('mem1_hf').__name__, 'worker': worker}))\n"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": PLUGIN_MODULE, "VERL_USE_EXTERNAL_PLUGINS": "none"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "not available" not in out.stderr and "circular import" not in out.stderr, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found == {
        "replica": "HFRolloutReplica",
        "worker": "verl_mem1.training.verl_plugin.cpu_rollout.HFServerAdapter",
    }


@pytest.mark.parametrize("device", ["cuda", "npu"])
def test_without_a_mem1_recipe_verl_keeps_its_stock_engines(device):
    """verl-mem1 installed (its ``verl.plugins`` entry point loads the plug-in on ``import verl``), a verl run that is
    not MEM1's: verl builds its own FSDP engines on every vendor of the device; only ``VERL_ENGINE_VENDOR=mem1`` (what
    the MEM1 recipes set) selects the MEM1 engines. The device is verl's own override (no GPU needed to look it up)."""
    code = (
        "import json, os, verl\n"
        f"from {PLUGIN_MODULE} import register\n"
        "register()  # what the entry point does on import verl\n"
        "from verl.workers.engine import EngineRegistry as e\n"
        "def names(vendor):\n"
        "    os.environ['VERL_ENGINE_VENDOR'] = vendor\n"
        "    return [f'{c.__module__}.{c.__name__}' for c in (e.get_engine_cls('language_model', 'fsdp2'),"
        " e.get_engine_cls('value_model', 'fsdp'))]\n"
        "print(json.dumps({v: names(v) for v in ('nvidia', 'amd', 'huawei', 'mem1')}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_PLATFORM", ENGINE_VENDOR_ENV)}
    env["VERL_ENGINE_DEVICE"] = device
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    stock = "verl.workers.engine.fsdp.transformer_impl.FSDPEngineWith"
    for vendor in ("nvidia", "amd", "huawei"):
        assert found[vendor] == [stock + "LMHead", stock + "ValueHead"], vendor
    mem1 = "verl_mem1.training.verl_plugin.engine.MEM1FSDPEngineWith"
    assert found["mem1"] == [mem1 + "LMHead", mem1 + "ValueHead"]


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
    env = {
        **os.environ,
        "VERL_USE_EXTERNAL_MODULES": PLUGIN_MODULE,
        "VERL_USE_EXTERNAL_PLUGINS": "none",
        ENGINE_VENDOR_ENV: ENGINE_VENDOR,
    }
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
