"""MEM1 training: pack episodes into shared-prefix segments and score them exactly (see docs/design.md).

Public API (imported lazily, so ``mem1 --help`` and ``verl_mem1.training.parity`` stay light):

- layout: ``PackedSample``, ``pack_episode``, ``per_turn_samples``, ``pack_batch``, ``packed_token_count``,
  ``per_turn_token_count``
- attention (the rule and its kernels): ``mask_rule``, ``dense_mask``, ``flex_block_mask``, ``segment_layout``,
  ``SegmentLayout``, ``check_bool_mask``, ``PACKED_BACKENDS``
- hf_attention (Hugging Face hook-up): ``enable_packed_attention``, ``disable_packed_attention``,
  ``register_packed_attention``, ``skip_mask_creation``, ``packed_model_call``, ``masked_forward``, ``MEM1_ATTENTION``
- forward: ``packed_logprobs``, ``packed_logprobs_and_entropy``, ``packed_values``, ``per_turn_logprobs``,
  ``per_turn_logprobs_and_entropy``, ``episode_logprobs``, ``resolve_backend``
- streaming (segment-group training): ``streamed_logprobs_and_entropy``, ``segment_groups``
- parity: ``parity_report``, ``format_report`` (the ``mem1 parity`` command is ``verl_mem1.cli.parity``)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "layout": (
        "PackedSample",
        "pack_episode",
        "per_turn_samples",
        "pack_batch",
        "packed_token_count",
        "per_turn_token_count",
    ),
    "attention": (
        "mask_rule",
        "dense_mask",
        "flex_block_mask",
        "segment_layout",
        "SegmentLayout",
        "check_bool_mask",
        "PACKED_BACKENDS",
    ),
    "hf_attention": (
        "enable_packed_attention",
        "disable_packed_attention",
        "register_packed_attention",
        "skip_mask_creation",
        "packed_model_call",
        "masked_forward",
        "MEM1_ATTENTION",
    ),
    "forward": (
        "packed_logprobs",
        "packed_logprobs_and_entropy",
        "packed_values",
        "per_turn_logprobs",
        "per_turn_logprobs_and_entropy",
        "episode_logprobs",
        "resolve_backend",
    ),
    "streaming": ("streamed_logprobs_and_entropy", "segment_groups"),
    "parity": ("parity_report", "format_report"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'verl_mem1.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"verl_mem1.training.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
