"""verl on CPU: a platform for verl's ``PlatformRegistry`` (``VERL_PLATFORM=cpu``), so its unmodified trainer runs
on a machine without accelerators (CI, laptops).

verl 0.9 routes every device question through ``verl.plugin.platform.get_platform()``: the torch device module, the
collective backend, the Ray resource its workers reserve. This platform answers them for the CPU:

- device ``cpu``, collectives on gloo;
- each verl worker reserves one Ray ``GPU`` as on a GPU node, but the GPUs are logical: ``ray.init(num_gpus=N)``
  declares N "slots" on a machine without any (``recipes/platform/cpu.yaml``), so verl's placement groups,
  colocation, rank count and its own resource check (which counts Ray ``GPU``/``NPU`` only) work unchanged. Ray
  sets ``CUDA_VISIBLE_DEVICES`` for each worker as usual; CPU torch ignores it;
- the device module is ``torch.cpu`` plus no-ops for what it lacks (caches, memory statistics, IPC), so verl's calls
  to ``get_torch_device().empty_cache()`` and the like do nothing instead of failing;
- three adaptations of verl itself, made when the platform is selected, each watched by
  ``tests/training/verl_plugin/test_cpu_platform_on_cpu.py`` for verl changing the code they adapt:
  its workers join the process group with ``"cpu:gloo,{device}:{backend}"``, which torch rejects when the device is
  ``cpu`` (a duplicate device), so ``"gloo"`` becomes the default ``backend`` argument of
  ``verl.utils.distributed.initialize_global_process_group_ray`` (verl's workers leave it unset); and verl loads the
  critic's value model with ``attn_implementation="flash_attention_2"`` hard-coded, which needs flash-attn and CUDA, so
  ``verl.utils.model.load_valuehead_model`` (imported by verl's engine at call time) loads it with the attention the
  model config asks for (``override_config.attn_implementation``, sdpa in ``recipes/platform/cpu.yaml``); and verl
  wraps forward-only FSDP2 engines (the reference policy, for KL) in ``CPUOffloadPolicy(pin_memory=True)``, and pinning
  memory needs an accelerator, so the MEM1 engines build theirs inside ``unpinned_cpu_offload``;
- Ray starts every worker with ``OMP_NUM_THREADS=1`` (its rule for an actor reserving one CPU), so torch would train
  and generate on one core of the machine: the platform gives torch the usable cores (``MEM1_CPU_THREADS`` sets the
  number, e.g. cores / ranks when several FSDP ranks share one machine).

Selected only by ``VERL_PLATFORM=cpu`` (verl's own override); auto-detection never picks it.
"""

from __future__ import annotations

import contextlib
import os
import types
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

PLATFORM_NAME = "cpu"


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


def _mem_get_info(*args: Any, **kwargs: Any) -> tuple[int, int]:
    """(free, total) bytes of host memory, as ``torch.cuda.mem_get_info`` reports a GPU's."""
    import psutil

    memory = psutil.virtual_memory()
    return memory.available, memory.total


class _CPUDeviceModule(types.ModuleType):
    """``torch.cpu`` with the calls verl makes on ``torch.cuda`` that have no CPU meaning answered harmlessly."""

    _FALLBACKS = {
        "empty_cache": _noop,
        "ipc_collect": _noop,
        "reset_peak_memory_stats": _noop,
        "set_per_process_memory_fraction": _noop,
        "memory_allocated": _zero,
        "memory_reserved": _zero,
        "max_memory_allocated": _zero,
        "max_memory_reserved": _zero,
        "mem_get_info": _mem_get_info,
        "get_rng_state": lambda *args, **kwargs: torch.get_rng_state(),
        "set_rng_state": lambda state, *args, **kwargs: torch.set_rng_state(state),
        "manual_seed": lambda seed: torch.manual_seed(seed),
        "manual_seed_all": lambda seed: torch.manual_seed(seed),
        "get_device_name": lambda *args, **kwargs: "cpu",
        "is_initialized": lambda: True,
    }

    def __init__(self) -> None:
        super().__init__("verl_mem1_cpu_device")

    def __getattr__(self, name: str) -> Any:
        if hasattr(torch.cpu, name):
            return getattr(torch.cpu, name)
        if name in self._FALLBACKS:
            return self._FALLBACKS[name]
        raise AttributeError(f"torch.cpu has no {name!r} and the MEM1 CPU platform does not provide it")


CPU_DEVICE_MODULE = _CPUDeviceModule()


def compute_threads() -> int:
    """Threads for torch on this platform: ``MEM1_CPU_THREADS`` if set, else the cores this process may run on."""
    configured = os.environ.get("MEM1_CPU_THREADS", "").strip()
    if configured:
        if not configured.isdigit() or int(configured) < 1:
            raise ValueError(f"MEM1_CPU_THREADS must be a positive integer, got {configured!r}")
        return int(configured)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_the_cores() -> None:
    """Undo Ray's one-thread default for torch in this process (see the module docstring)."""
    torch.set_num_threads(compute_threads())


def use_gloo_process_group() -> None:
    """Make plain ``gloo`` the default backend of verl's Ray process-group initialisation (see the module docstring)."""
    from verl.utils import distributed

    init = distributed.initialize_global_process_group_ray
    names = init.__code__.co_varnames[: init.__code__.co_argcount]
    if names[-len(init.__defaults__) :] != ("timeout_second", "backend"):
        raise RuntimeError(
            f"verl's initialize_global_process_group_ray changed its arguments {names}; update the CPU platform"
        )
    init.__defaults__ = (init.__defaults__[0], "gloo")


def load_value_models_without_flash_attention() -> None:
    """Make verl's value-model loader use the model config's attention implementation (see the module docstring)."""
    from verl.utils import model as verl_model

    if getattr(verl_model.load_valuehead_model, "_mem1_cpu", False):
        return

    def load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code):
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification.from_pretrained(
            pretrained_model_name_or_path=local_path,
            torch_dtype=torch_dtype,
            config=model_config,
            attn_implementation=getattr(model_config, "_attn_implementation", None) or "sdpa",
            trust_remote_code=trust_remote_code,
        )

    load_valuehead_model._mem1_cpu = True
    load_valuehead_model.__wrapped__ = verl_model.load_valuehead_model  # verl's, for the test that watches it
    verl_model.load_valuehead_model = load_valuehead_model


@contextlib.contextmanager
def unpinned_cpu_offload():
    """While it is open, verl's FSDP2 engines build their CPU offload policy unpinned (see the module docstring).

    Opened by the MEM1 engines around ``_build_fsdp_module`` on this platform (verl's engine module asks for the
    platform while it is imported, so the platform cannot change it then)."""
    import inspect

    from verl.workers.engine.fsdp import transformer_impl

    if "CPUOffloadPolicy(pin_memory=True)" not in inspect.getsource(transformer_impl.FSDPEngine._build_fsdp_module):
        raise RuntimeError("verl's FSDPEngine._build_fsdp_module no longer builds CPUOffloadPolicy(pin_memory=True); "
                           "update the CPU platform")  # fmt: skip
    policy = transformer_impl.CPUOffloadPolicy

    def unpinned_offload_policy(pin_memory: bool = True):
        return policy(pin_memory=False)

    transformer_impl.CPUOffloadPolicy = unpinned_offload_policy
    try:
        yield
    finally:
        transformer_impl.CPUOffloadPolicy = policy


def on_cpu_platform() -> bool:
    """Whether verl runs on this platform (``VERL_PLATFORM=cpu``)."""
    from verl.plugin.platform import get_platform

    return isinstance(get_platform(), PlatformCPU)


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """verl's platform interface answered for the CPU (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        use_the_cores()
        use_gloo_process_group()
        load_value_models_without_flash_attention()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return False  # never auto-detected: VERL_PLATFORM=cpu selects it

    def current_device(self) -> str:  # type: ignore[override]
        # verl passes get_device_id() straight to .to()/device=: an int names an accelerator, "cpu" the CPU
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # what Ray sets for a worker holding a (logical) GPU; nothing on CPU reads it

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"  # logical slots declared to Ray (see the module docstring), one per FSDP rank

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
