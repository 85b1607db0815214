"""The plug-in's CPU platform for verl (``VERL_PLATFORM=cpu``): what verl's trainer asks of a platform, answered for a
machine without accelerators. Run in a fresh interpreter each: verl decides its platform once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _run(code: str, platform: str | None = "cpu") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    if platform:
        env["VERL_PLATFORM"] = platform
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_verl_uses_the_cpu_platform_when_selected_on_cpu():
    result = _run(
        """
import json, verl, torch
from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device, get_device_id, get_resource_name
from verl.plugin.platform import get_platform
module = get_torch_device()
module.empty_cache(); module.ipc_collect(); module.synchronize()
free, total = module.mem_get_info()
x = torch.ones(2).to(get_device_id())
print(json.dumps({
    "device": get_device_name(), "backend": get_nccl_backend(), "resource": get_resource_name(),
    "class": type(get_platform()).__name__, "allocated": module.memory_allocated(), "free_ok": 0 < free <= total,
    "tensor_device": str(x.device), "auto_detected": get_platform().is_platform_available(use_smi_check=True),
}))
"""
    )
    assert result == {
        "device": "cpu",
        "backend": "gloo",
        "resource": "GPU",  # logical Ray GPUs are the CPU platform's worker slots
        "class": "PlatformCPU",
        "allocated": 0,
        "free_ok": True,
        "tensor_device": "cpu",
        "auto_detected": False,  # only VERL_PLATFORM=cpu selects it
    }


def test_verl_process_group_joins_on_gloo_on_cpu():
    """verl's workers join with "cpu:gloo,{device}:{backend}", which torch refuses for device cpu; on the CPU platform
    the same call (no backend given, as verl's workers make it) joins a gloo group that reduces."""
    result = _run(
        """
import json, os, torch, torch.distributed as dist
from verl.utils.device import get_device_name, get_nccl_backend
from verl.utils.distributed import initialize_global_process_group_ray
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517", RANK="0", WORLD_SIZE="1")
try:
    dist.distributed_c10d.BackendConfig(f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}")
    verl_string = "accepted"
except ValueError as exc:
    verl_string = "refused: " + str(exc).split(".")[0]
initialize_global_process_group_ray(timeout_second=60)
x = torch.tensor([3.0])
dist.all_reduce(x)
print(json.dumps({"verl_string": verl_string, "backend": dist.get_backend(), "sum": x.item()}))
dist.destroy_process_group()
"""
    )
    assert result["verl_string"].startswith("refused: Duplicate device type cpu")
    assert result["backend"] == "gloo"
    assert result["sum"] == 3.0


def test_mem1_engines_are_verl_engines_on_cpu():
    result = _run(
        """
import json, os, verl
os.environ["VERL_ENGINE_VENDOR"] = "mem1"  # what the MEM1 recipes set for every worker (recipes/cluster.yaml)
from verl.workers.engine.base import EngineRegistry
from verl.workers.rollout.base import get_rollout_class
from verl.workers.rollout.replica import get_rollout_replica_class
print(json.dumps({
    "actor": EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__,
    "critic": EngineRegistry.get_engine_cls("value_model", "fsdp2").__name__,
    "replica": get_rollout_replica_class("mem1_hf").__name__,
    "adapter": get_rollout_class("mem1_hf", "async").__name__,
}))
"""
    )
    assert result == {
        "actor": "MEM1FSDPEngineWithLMHead",
        "critic": "MEM1FSDPEngineWithValueHead",
        "replica": "HFRolloutReplica",
        "adapter": "HFServerAdapter",
    }


def test_unknown_device_call_names_itself_on_cpu():
    from verl_mem1.training.verl_plugin.cpu_platform import CPU_DEVICE_MODULE

    with pytest.raises(AttributeError, match="no 'graph_pool_handle'"):
        CPU_DEVICE_MODULE.graph_pool_handle  # noqa: B018


def test_value_models_load_without_flash_attention_on_cpu(tiny_model_dir):
    """verl's loader hard-codes flash_attention_2 (flash-attn + CUDA); on the CPU platform the critic's model loads
    with the config's attention and has verl's value head (one label)."""
    result = _run(
        f"""
import inspect, json, verl
from transformers import AutoConfig
from verl.plugin.platform import get_platform
from verl.utils import model as verl_model
get_platform()
config = AutoConfig.from_pretrained({str(tiny_model_dir)!r}, attn_implementation="sdpa")
config.num_labels = 1
module = verl_model.load_valuehead_model({str(tiny_model_dir)!r}, None, config, False)
print(json.dumps({{
    "class": type(module).__name__, "attention": module.config._attn_implementation,
    "labels": module.score.out_features,
    "verl_signature": list(inspect.signature(verl_model.load_valuehead_model.__wrapped__).parameters),
    "verl_hard_codes_flash": "flash_attention_2" in inspect.getsource(verl_model.load_valuehead_model.__wrapped__),
}}))
"""
    )
    assert result == {
        "class": "Qwen2ForTokenClassification",
        "attention": "sdpa",
        "labels": 1,
        "verl_signature": ["local_path", "torch_dtype", "model_config", "trust_remote_code"],
        "verl_hard_codes_flash": True,  # when verl stops, the adaptation can go
    }


def test_forward_only_engines_offload_unpinned_on_cpu():
    """verl builds the reference policy's FSDP2 engine with CPUOffloadPolicy(pin_memory=True) (pinning needs an
    accelerator); the MEM1 engines build it unpinned on the CPU platform, and only while they build."""
    result = _run(
        """
import json, verl
from verl.plugin.platform import get_platform
get_platform()
from verl.workers.engine.fsdp import transformer_impl
from verl_mem1.training.verl_plugin.cpu_platform import on_cpu_platform, unpinned_cpu_offload
original = transformer_impl.CPUOffloadPolicy
with unpinned_cpu_offload():
    inside = transformer_impl.CPUOffloadPolicy(pin_memory=True).pin_memory
restored = transformer_impl.CPUOffloadPolicy is original
print(json.dumps({"on_cpu": on_cpu_platform(), "inside": inside, "restored": restored,
                  "verl_pins": original(pin_memory=True).pin_memory}))
"""
    )
    assert result == {"on_cpu": True, "inside": False, "restored": True, "verl_pins": True}
    assert _run("import json, verl\nfrom verl_mem1.training.verl_plugin.cpu_platform import on_cpu_platform\n"
                "print(json.dumps({'on_cpu': on_cpu_platform()}))", platform=None) == {"on_cpu": False}  # fmt: skip


def test_ray_workers_compute_on_every_core_on_cpu():
    """Ray starts each worker with OMP_NUM_THREADS=1; once verl selects the CPU platform there, torch uses the cores
    (the RL probe's actor update ran on one of two cores before), or MEM1_CPU_THREADS when it is set."""
    result = _run(
        """
import json, os, ray
ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"VERL_PLATFORM": "cpu"}})

@ray.remote(num_cpus=1)
class Worker:
    def threads(self):
        import torch
        before = torch.get_num_threads()
        from verl.plugin.platform import get_platform
        get_platform()
        return os.environ["OMP_NUM_THREADS"], before, torch.get_num_threads(), len(os.sched_getaffinity(0))

default = ray.get(Worker.remote().threads.remote())
pinned = ray.get(Worker.options(runtime_env={"env_vars": {"MEM1_CPU_THREADS": "3"}}).remote().threads.remote())
print(json.dumps({"default": default, "pinned": pinned}))
"""
    )
    omp, before, after, cores = result["default"]
    assert (omp, before) == ("1", 1)  # Ray's default, which the platform corrects
    assert after == cores
    assert result["pinned"][2] == 3


def test_bad_thread_count_names_the_variable_on_cpu():
    from verl_mem1.training.verl_plugin.cpu_platform import compute_threads

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEM1_CPU_THREADS", "two")
        with pytest.raises(ValueError, match="MEM1_CPU_THREADS"):
            compute_threads()
