"""The MEM1 attention in Hugging Face models (transformers 5.x, no model edits), and the packed model call.

Hook-up (transformers 5.x, no model edits): ``enable_packed_attention(model)`` registers ``"mem1_packed"``
with ``AttentionInterface`` and ``AttentionMaskInterface`` and switches the model to it with
``set_attn_implementation``. Calls without ``mem1_backend=...`` are delegated to the model's previous
implementation (attention *and* mask creation), so ordinary forwards are unchanged. Packed calls pass
``mem1_backend`` through the model's ``**kwargs`` (which reach the attention function, and survive
gradient-checkpoint recomputation), plus a 4-D bool mask or a ``BlockMask`` as ``attention_mask`` (a 4-D
mask is used as-is by ``create_causal_mask``), or a ``SegmentLayout`` as ``mem1_layout`` with mask creation
skipped (otherwise the reset position ids would make transformers build an L×L packed-sequence mask).

Segment-group training (``streaming.py``) adds two such kwargs: ``mem1_collect_kv`` (a dict the attention fills with
each layer's keys/values, after RoPE) on the prompt's call, and ``mem1_prefix_kv`` (those keys/values, per layer)
on each group's call, prepended to the group's own; the layout then spans ``[prompt | group]`` and only the
group has queries (``segmented`` and ``flash`` only).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import weakref
from collections.abc import Iterator

import torch
from torch.nn.attention.flex_attention import BlockMask

from verl_mem1.training.attention import (
    FLOAT_MASK_ERROR,
    PACKED_BACKENDS,
    check_bool_mask,
    dense_mask,
    flash_varlen,
    flex_block_mask,
    flex_kernel,
    segment_layout,
    segmented_sdpa,
)

MEM1_ATTENTION = "mem1_packed"
_SKIP_MASK_CREATION: contextvars.ContextVar[bool] = contextvars.ContextVar("mem1_skip_mask", default=False)
_BASE_IMPLEMENTATION: dict[int, str] = {}  # id(config) -> the implementation ordinary calls are delegated to


def _base_implementation(config) -> str:
    return _BASE_IMPLEMENTATION.get(id(config), "sdpa")


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The ``"mem1_packed"`` attention function: packed calls by ``mem1_backend``, the rest to the base one."""
    backend = kwargs.pop("mem1_backend", None)
    layout = kwargs.pop("mem1_layout", None)
    compiled = kwargs.pop("mem1_flex_compile", True)
    prefix_kv = kwargs.pop("mem1_prefix_kv", None)
    collect_kv = kwargs.pop("mem1_collect_kv", None)
    if prefix_kv is not None or collect_kv is not None:
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            raise TypeError(f"{type(module).__name__} has no layer_idx; prompt keys/values cannot be shared")
        if prefix_kv is not None and backend not in ("segmented", "flash"):
            raise ValueError(f"prepended prompt keys/values need the 'segmented' or 'flash' backend, not {backend!r}")
        if prefix_kv is not None:  # keys/values of a prompt computed in an earlier call (segment-group training)
            prefix_key, prefix_value = prefix_kv[layer]
            key, value = torch.cat([prefix_key, key], dim=2), torch.cat([prefix_value, value], dim=2)
        if collect_kv is not None:  # first write wins: a checkpoint recompute must not replace the graph's tensors
            collect_kv.setdefault(layer, (key, value))
    if backend is None:
        if isinstance(attention_mask, torch.Tensor) and attention_mask.is_floating_point():
            if bool((attention_mask > 0).any()):  # additive masks are 0 / negative; a positive entry is a 0/1 mask
                raise TypeError(FLOAT_MASK_ERROR.format(dtype=attention_mask.dtype))
        base = _base_implementation(module.config)
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        if base == "eager" or base not in ALL_ATTENTION_FUNCTIONS:
            fn = sys.modules[type(module).__module__].eager_attention_forward
        else:
            fn = ALL_ATTENTION_FUNCTIONS[base]
        # the base function sees its own name as the config's implementation: transformers' flash-attention entry
        # passes config._attn_implementation on, and would otherwise look for a Hub kernel named "mem1_packed"
        config = module.config
        config._attn_implementation_internal = base
        try:
            return fn(
                module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                sliding_window=sliding_window, **kwargs,
            )  # fmt: skip
        finally:
            config._attn_implementation_internal = MEM1_ATTENTION
    if sliding_window is not None:
        raise NotImplementedError("the MEM1 packed layout does not support sliding-window attention layers")
    if backend == "dense":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        check_bool_mask(attention_mask)
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=False
        )
    if query.shape[0] != 1:
        raise ValueError(f"packed attention expects batch size 1 (one packed row), got {query.shape[0]}")
    if backend == "flex":
        if not isinstance(attention_mask, BlockMask):
            if isinstance(attention_mask, torch.Tensor):
                check_bool_mask(attention_mask)
            raise TypeError(f"backend 'flex' expects a BlockMask, got {type(attention_mask).__name__}")
        if dropout:
            raise ValueError("flex attention has no dropout; set the model's attention_dropout to 0")
        out = flex_kernel(query, key, value, attention_mask, scaling, compiled)
        return out.transpose(1, 2).contiguous(), None
    if layout is None:
        raise ValueError(f"backend {backend!r} needs mem1_layout=SegmentLayout(...)")
    if backend == "segmented":
        out = segmented_sdpa(query, key, value, layout, scaling, dropout)
        return out.transpose(1, 2).contiguous(), None
    if backend == "flash":
        return flash_varlen(query, key, value, layout, scaling, dropout), None
    raise ValueError(f"unknown packed attention backend {backend!r}; choose from {PACKED_BACKENDS}")


def _packed_mask_interface(*args, **kwargs):
    """Mask creation for ``"mem1_packed"``: none during a segmented/flash call, else the base implementation's."""
    if _SKIP_MASK_CREATION.get():
        return None
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    base = _base_implementation(kwargs.get("config"))
    return ALL_MASK_ATTENTION_FUNCTIONS[base if base in ALL_MASK_ATTENTION_FUNCTIONS else "sdpa"](*args, **kwargs)


def register_packed_attention() -> None:
    """Register ``"mem1_packed"`` with transformers' attention and mask interfaces (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(MEM1_ATTENTION, packed_attention_forward)
    AttentionMaskInterface.register(MEM1_ATTENTION, _packed_mask_interface)


def enable_packed_attention(model: torch.nn.Module) -> None:
    """Switch ``model`` to ``"mem1_packed"`` (idempotent); ordinary calls keep the previous implementation."""
    register_packed_attention()
    config = model.config
    current = config._attn_implementation
    if current == MEM1_ATTENTION:
        return
    key = id(config)
    _BASE_IMPLEMENTATION[key] = current or "sdpa"
    weakref.finalize(config, _BASE_IMPLEMENTATION.pop, key, None)
    model.set_attn_implementation(MEM1_ATTENTION)
    if model.config._attn_implementation != MEM1_ATTENTION:
        raise RuntimeError(f"{type(model).__name__} did not accept a custom attention implementation")


def disable_packed_attention(model: torch.nn.Module) -> None:
    """Give ``model`` back the implementation it had before ``enable_packed_attention``."""
    if model.config._attn_implementation == MEM1_ATTENTION:
        model.set_attn_implementation(_BASE_IMPLEMENTATION.pop(id(model.config), "sdpa"))


@contextlib.contextmanager
def skip_mask_creation(skip: bool = True) -> Iterator[None]:
    """While active (and ``skip``), ``"mem1_packed"`` models build no attention mask in their forward.

    For segmented/flash calls, which carry their layout in ``mem1_layout``: without this, the reset position ids
    would make transformers build an L×L packed-sequence mask that nothing uses.
    """
    token = _SKIP_MASK_CREATION.set(skip)
    try:
        yield
    finally:
        _SKIP_MASK_CREATION.reset(token)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def attention_inputs(
    backend: str,
    segment_ids: torch.Tensor,
    prompt_segment_ids: torch.Tensor | None = None,
    *,
    compile_flex: bool = False,
) -> dict:
    """The model kwargs that make a ``"mem1_packed"`` model attend under the MEM1 rule with ``backend``: the one
    backend dispatch, shared by the local forward (``packed_model_call``) and the verl engine.

    Args:
        backend: ``dense`` (a bool ``[1, 1, L, L]`` mask), ``flex`` (a ``BlockMask``), ``segmented`` or ``flash``
            (a ``SegmentLayout``; transformers must then build no mask: see ``skip_mask_creation``).
        segment_ids, prompt_segment_ids: ``(L,)`` on the model's device (``layout.py``).
        compile_flex: compile the flex kernel.

    Returns:
        kwargs for the model call (``attention_mask`` and/or ``mem1_layout``, ``mem1_backend``).
    """
    if backend not in PACKED_BACKENDS:
        raise ValueError(f"unknown packed attention backend {backend!r}; choose from {PACKED_BACKENDS}")
    kwargs: dict = {"mem1_backend": backend}
    if backend == "dense":
        kwargs["attention_mask"] = dense_mask(segment_ids, prompt_segment_ids)
    elif backend == "flex":
        kwargs["attention_mask"] = flex_block_mask(segment_ids, prompt_segment_ids)
        kwargs["mem1_flex_compile"] = compile_flex
    else:
        kwargs["attention_mask"] = None
        kwargs["mem1_layout"] = segment_layout(segment_ids, prompt_segment_ids)
    return kwargs


def needs_mask_skip(backend: str) -> bool:
    """Whether transformers' own mask creation must be skipped for ``backend`` (the layout replaces the mask)."""
    return backend in ("segmented", "flash")


def packed_model_call(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    segment_ids: torch.Tensor,
    prompt_segment_ids: torch.Tensor | None = None,
    *,
    backend: str = "flex",
    compile_flex: bool = True,
    **model_kwargs,
):
    """Run ``model`` on one packed row (1-D tensors) under the MEM1 rule with ``backend``; return its output."""
    if backend not in PACKED_BACKENDS:
        raise ValueError(f"unknown packed attention backend {backend!r}; choose from {PACKED_BACKENDS}")
    enable_packed_attention(model)
    device = model_device(model)
    seg = segment_ids.to(device)
    pseg = None if prompt_segment_ids is None else prompt_segment_ids.to(device)
    kwargs = attention_inputs(backend, seg, pseg, compile_flex=compile_flex)
    with skip_mask_creation(needs_mask_skip(backend)):
        return model(
            input_ids=input_ids.to(device)[None],
            position_ids=position_ids.to(device)[None],
            use_cache=False,
            **kwargs,
            **model_kwargs,
        )


def masked_forward(
    model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor, **kw
):
    """Run ``model`` with a caller-built 4-D mask ``[1, 1, L, L]`` (bool, True = attend) through SDPA.

    Raises ``TypeError`` for a float mask (see ``FLOAT_MASK_ERROR``) before anything runs.
    """
    check_bool_mask(attention_mask)
    if attention_mask.dim() != 4:
        raise ValueError(f"expected a 4-D [batch, 1, L, L] mask, got shape {tuple(attention_mask.shape)}")
    enable_packed_attention(model)
    device = model_device(model)
    ids = input_ids.to(device)
    pos = position_ids.to(device)
    return model(
        input_ids=ids if ids.dim() == 2 else ids[None],
        position_ids=pos if pos.dim() == 2 else pos[None],
        attention_mask=attention_mask.to(device),
        use_cache=False,
        mem1_backend="dense",
        **kw,
    )
