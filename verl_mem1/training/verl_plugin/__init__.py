"""MEM1 as a verl 0.9 plug-in. Importing this package is loading the plug-in; it registers, idempotently:

- the ``mem1_agent`` agent loop in verl's agent-loop registry (``agent_loop.py``);
- MEM1-aware FSDP engines (policy, reference, critic) in verl's ``EngineRegistry`` (``engine.py``);
- the ``mem1_packed`` attention implementation with transformers (``training/attention.py``);
- a ``cpu`` platform in verl's ``PlatformRegistry`` (``cpu_platform.py``, selected by ``VERL_PLATFORM=cpu``), registered
  first: verl's engine modules ask for the platform when they are imported;
- the ``mem1_hf`` rollout (``cpu_rollout.py``): transformers' generation behind verl's replica and weight-sync
  interfaces, for the trainer on CPU.

verl imports it in every process that needs it through any of its own mechanisms: the
``actor_rollout_ref.model.external_lib`` / ``critic.model.external_lib`` config keys (what the recipes set),
``VERL_USE_EXTERNAL_MODULES=verl_mem1.training.verl_plugin``, or the ``verl.plugins`` entry point this package
declares (loaded on ``import verl`` unless ``VERL_USE_EXTERNAL_PLUGINS=none``). Nothing in verl is edited.
"""

from __future__ import annotations

AGENT_NAME = "mem1_agent"
PLUGIN_MODULE = __name__

_registered = False


def _register_platform() -> None:
    from verl_mem1.training.verl_plugin import cpu_platform  # noqa: F401 - @PlatformRegistry.register("cpu")


def register() -> None:
    """Register the agent loop, the engines and the attention implementation (safe to call again)."""
    global _registered
    if _registered:
        return
    _register_platform()  # first: verl's engine modules ask for the platform when they are imported
    from verl_mem1.training.attention import register_packed_attention
    from verl_mem1.training.verl_plugin import agent_loop  # noqa: F401 - @register("mem1_agent") on import
    from verl_mem1.training.verl_plugin.cpu_rollout import register_rollout
    from verl_mem1.training.verl_plugin.engine import register_engines

    register_engines()
    register_packed_attention()
    register_rollout()
    _registered = True


register()
