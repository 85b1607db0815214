"""MEM1 as a verl 0.9 plug-in. Importing this package is loading the plug-in; it registers, idempotently:

- the ``mem1_agent`` agent loop in verl's agent-loop registry (``agent_loop.py``);
- MEM1-aware FSDP engines (policy, reference, critic) in verl's ``EngineRegistry`` (``engine.py``);
- the ``mem1_packed`` attention implementation with transformers (``training/attention.py``).

verl imports it in every process that needs it through any of its own mechanisms: the
``actor_rollout_ref.model.external_lib`` / ``critic.model.external_lib`` config keys (what the recipes set),
``VERL_USE_EXTERNAL_MODULES=verl_mem1.training.verl_plugin``, or the ``verl.plugins`` entry point this package
declares (loaded on ``import verl`` unless ``VERL_USE_EXTERNAL_PLUGINS=none``). Nothing in verl is edited.
"""

from __future__ import annotations

AGENT_NAME = "mem1_agent"
PLUGIN_MODULE = __name__

_registered = False


def register() -> None:
    """Register the agent loop, the engines and the attention implementation (safe to call again)."""
    global _registered
    if _registered:
        return
    from verl_mem1.training.attention import register_packed_attention
    from verl_mem1.training.verl_plugin import agent_loop  # noqa: F401 - @register("mem1_agent") on import
    from verl_mem1.training.verl_plugin.engine import register_engines

    register_engines()
    register_packed_attention()
    _registered = True


register()
