"""MEM1 as a verl 0.9 plug-in. Importing this package is loading the plug-in; it registers, idempotently:

- a ``cpu`` platform in verl's ``PlatformRegistry`` (``cpu_platform.py``, selected by ``VERL_PLATFORM=cpu``), at once:
  verl's engine modules ask for the platform when they are imported;
- the ``mem1_agent`` agent loop in verl's agent-loop registry (``agent_loop.py``), when verl's agent-loop module is
  imported;
- MEM1-aware FSDP engines (policy, reference, critic) in verl's ``EngineRegistry`` (``engine.py``), when verl's
  engine package is imported, under the vendor key ``mem1`` alone: verl builds them only where
  ``VERL_ENGINE_VENDOR=mem1`` (the MEM1 recipes, ``mem1 sft``), so other verl runs keep verl's stock engines; the
  engines register the ``mem1_packed`` attention with transformers when they switch a model to it
  (``training/hf_attention.py``);
- the ``mem1_hf`` rollout (``cpu_rollout.py``): transformers' generation behind verl's replica and weight-sync
  interfaces, for the trainer on CPU, when verl's rollout-replica module is imported.

verl imports it in every process that needs it through any of its own mechanisms: the
``actor_rollout_ref.model.external_lib`` / ``critic.model.external_lib`` config keys (what the recipes set),
``VERL_USE_EXTERNAL_MODULES=verl_mem1.training.verl_plugin``, or the ``verl.plugins`` entry point this package
declares (loaded on ``import verl`` unless ``VERL_USE_EXTERNAL_PLUGINS=none``). Those mechanisms also reach processes
that train nothing (vLLM's servers and engine cores): registering on verl's own imports (post-import hooks) keeps the
FSDP engines and the agent loop out of them, so an import problem there cannot stop a rollout server. Nothing in
verl's files is edited; at run time only the CPU platform, when a run selects it (``VERL_PLATFORM=cpu``,
``+platform=cpu``), changes two verl defaults in its processes (``cpu_platform.py``: the process-group backend, the
value-model loader's attention).
"""

from __future__ import annotations

import logging

import wrapt

AGENT_NAME = "mem1_agent"
PLUGIN_MODULE = __name__

logger = logging.getLogger(__name__)
_registered = False


def _register_engines(_module: object) -> None:
    # registers on import; when engine.py itself is what imports verl's engine package, this is its partial module and
    # it registers as its import completes
    from verl_mem1.training.verl_plugin import engine  # noqa: F401


def _register_agent_loop(_module: object) -> None:
    from verl_mem1.training.verl_plugin import agent_loop  # noqa: F401 - @register("mem1_agent") on import


def _register_rollout(_module: object) -> None:
    # registers on import; when cpu_rollout.py itself is what imports verl's replica module (a Ray rollout server
    # loading its class), this is its partial module and it registers as its import completes
    try:
        from verl_mem1.training.verl_plugin import cpu_rollout  # noqa: F401
    except Exception:  # noqa: BLE001 - vLLM's processes import verl's replica module; mem1_hf is never needed there
        logger.warning("the mem1_hf rollout is not available in this process", exc_info=True)


# verl module -> what registers with it once it is imported (at once when it already is)
HOOKS = {
    "verl.workers.engine": _register_engines,
    "verl.experimental.agent_loop.agent_loop": _register_agent_loop,
    "verl.workers.rollout.replica": _register_rollout,
}


def register() -> None:
    """Register the platform now and the rest on verl's imports (safe to call again)."""
    global _registered
    if _registered:
        return
    from verl_mem1.training.verl_plugin import cpu_platform  # noqa: F401 - @PlatformRegistry.register("cpu")

    for module, hook in HOOKS.items():
        wrapt.register_post_import_hook(hook, module)
    _registered = True


register()
