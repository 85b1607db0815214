"""The MEM1 attention rule and its kernels; ``hf_attention.py`` plugs them into Hugging Face models.

Rule (``segment_ids`` from ``layout.py``): token ``i`` attends to token ``j`` iff ``j ≤ i`` and
``segment[j] == segment[i]`` or ``segment[j] == prompt_segment[i]`` — for one episode (``prompt_segment``
all 0) that is "the prompt causally, then each segment sees the prompt and causally itself".

Backends:

- ``dense``: a boolean ``[1, 1, L, L]`` mask (True = attend) through SDPA. The reference; O(L²) memory.
- ``flex``: ``torch.nn.attention.flex_attention`` with a ``BlockMask`` built block by block from the segment
  ids (never an L×L tensor) and a ``mask_mod`` for the partial blocks. Compiled (``torch.compile``) it is a fused
  kernel; eager it runs torch's unfused reference, which materialises the scores. Torch (2.13) has no flex
  backward on CPU: ``forward.py`` routes CPU training to ``segmented``.
- ``segmented``: the flash layout in plain torch — each segment's queries attend, via SDPA, to the prompt's
  keys/values prepended to the segment's own (lower-right causal). Works on any device, with autograd, in
  O(Σ_t n_t (P + n_t)) memory.
- ``flash``: ``flash_attn_varlen_func`` (CUDA, fp16/bf16): query sequences are the packed ranges (prompt,
  seg_1, ...), key sequences are ``[prompt]``, ``[prompt ⊕ seg_1]``, ... gathered by index; flash-attn aligns
  causality bottom-right, which is exactly "all of the prompt, causally the segment".

``attention_backend`` resolves ``mem1.attention`` (``auto`` included) to one of them on a device.

A float 0/1 mask is rejected everywhere here (``TypeError``): SDPA and Hugging Face *add* a float mask to the
scores, so 1.0/0.0 masks nothing and causality is lost — the reference implementation's bug.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

PACKED_BACKENDS = ("dense", "flex", "segmented", "flash")
FLEX_BLOCK_SIZE = 128
SEGMENTED_ROW_BLOCK = 256  # query rows per SDPA call in the segmented kernel

FLOAT_MASK_ERROR = (
    "got a {dtype} attention mask; the MEM1 packed forward needs a torch.bool mask (True = attend). "
    "SDPA and Hugging Face models ADD a floating-point mask to the attention scores, so a 1.0/0.0 mask masks "
    "nothing and causality is lost (the reference implementation's bug). Use mask.bool(), or an additive mask "
    "of 0/-inf with a model's own attention."
)

_compiled_flex: Callable | None = None


# --------------------------------------------------------------------------------------------------- the rule


def _prompt_segments(segment_ids: torch.Tensor, prompt_segment_ids: torch.Tensor | None) -> torch.Tensor:
    return torch.zeros_like(segment_ids) if prompt_segment_ids is None else prompt_segment_ids


def mask_rule(
    segment_ids: torch.Tensor, prompt_segment_ids: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
) -> torch.Tensor:
    """Whether query ``q_idx`` may attend to key ``kv_idx`` (broadcasting; the one definition all backends share)."""
    kv_segment = segment_ids[kv_idx]
    return (kv_idx <= q_idx) & ((kv_segment == segment_ids[q_idx]) | (kv_segment == prompt_segment_ids[q_idx]))


def check_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """Return ``mask`` if it is a bool tensor; raise ``TypeError`` for float masks (see ``FLOAT_MASK_ERROR``)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"expected a torch.bool tensor mask, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(FLOAT_MASK_ERROR.format(dtype=mask.dtype))
    return mask


def dense_mask(segment_ids: torch.Tensor, prompt_segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The reference mask: ``[1, 1, L, L]`` bool, True = attend."""
    pseg = _prompt_segments(segment_ids, prompt_segment_ids)
    idx = torch.arange(segment_ids.numel(), device=segment_ids.device)
    return mask_rule(segment_ids, pseg, idx[:, None], idx[None, :])[None, None]


def flex_block_mask(
    segment_ids: torch.Tensor, prompt_segment_ids: torch.Tensor | None = None, block_size: int = FLEX_BLOCK_SIZE
) -> BlockMask:
    """A ``BlockMask`` for the rule, built from the segment runs: O(L + blocks) work, never an L×L tensor.

    Each run of a segment allows a rectangle (its rows × its prompt's columns) and a causal triangle (itself);
    counting allowed entries per ``block_size``² tile in closed form classifies tiles as full (the kernel skips
    ``mask_mod``), partial, or empty (left out). ``mask_mod`` reads ids padded to a block multiple with values
    that match nothing, so it never indexes out of bounds.
    """
    seg = segment_ids.long()
    pseg = _prompt_segments(seg, prompt_segment_ids).long()
    length = seg.numel()
    blocks = max(1, -(-length // block_size))
    counts = torch.zeros(blocks, blocks, dtype=torch.int64)

    def overlap(lo: int, hi: int) -> tuple[int, torch.Tensor]:
        """First block touched by [lo, hi) and the overlap of [lo, hi) with each block from there on."""
        b0, b1 = lo // block_size, (hi - 1) // block_size + 1
        starts = torch.arange(b0, b1) * block_size
        return b0, (torch.clamp(starts + block_size, max=hi) - torch.clamp(starts, min=lo)).clamp(min=0)

    def triangle_prefix(x: torch.Tensor, c0: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Σ_{i < x} |{j : c0 ≤ j ≤ i, j < c0 + w}| (pairs j ≤ i of rows below x with the column range)."""
        y = (x - c0).clamp(min=0)
        inside = torch.minimum(y, w)
        return inside * (inside + 1) // 2 + (y - inside) * w

    for a, b, pa, pb in segment_runs(seg, pseg):
        if pb > pa:  # rows of the segment x columns of its prompt: all allowed
            r0, rows = overlap(a, b)
            k0, cols = overlap(pa, pb)
            counts[r0 : r0 + rows.numel(), k0 : k0 + cols.numel()] += rows[:, None] * cols[None, :]
        b0 = a // block_size
        starts = torch.arange(b0, (b - 1) // block_size + 1) * block_size
        lo = torch.clamp(starts, min=a)
        hi = torch.clamp(starts + block_size, max=b)
        c0, w = lo[None, :], (hi - lo)[None, :]
        tri = (triangle_prefix(hi[:, None], c0, w) - triangle_prefix(lo[:, None], c0, w)).clamp(min=0)
        counts[b0 : b0 + starts.numel(), b0 : b0 + starts.numel()] += tri
    full = counts == block_size * block_size
    partial = (counts > 0) & ~full

    def ordered(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num = b.sum(-1, dtype=torch.int32)
        idx = torch.argsort(b.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return num[None, None].to(seg.device), idx[None, None].contiguous().to(seg.device)

    padded = blocks * block_size
    seg_p = torch.nn.functional.pad(seg, (0, padded - length), value=-1)
    pseg_p = torch.nn.functional.pad(pseg, (0, padded - length), value=-2)

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & ((seg_p[kv_idx] == seg_p[q_idx]) | (seg_p[kv_idx] == pseg_p[q_idx]))

    kv_num, kv_indices = ordered(partial)
    full_num, full_indices = ordered(full)
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_indices,
        full_num,
        full_indices,
        BLOCK_SIZE=block_size,
        mask_mod=mask_mod,
        seq_lengths=(length, length),
    )


def segment_runs(seg: torch.Tensor, pseg: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """``(start, end, prefix_start, prefix_end)`` per segment run; the prefix (its prompt) is empty for prompts.

    Raises ``ValueError`` unless every segment is one contiguous run that comes after its prompt.
    """
    seg, pseg = seg.detach().cpu(), pseg.detach().cpu()
    length = seg.numel()
    if length == 0:
        raise ValueError("empty packed sample")
    change = (torch.nonzero(seg[1:] != seg[:-1]).flatten() + 1).tolist()
    seg_at, pseg_at = seg.tolist(), pseg.tolist()
    prompts: dict[int, tuple[int, int]] = {}
    seen: set[int] = set()
    spans: list[tuple[int, int, int, int]] = []
    for a, b in zip([0, *change], [*change, length], strict=True):
        s, p = seg_at[a], pseg_at[a]
        if s in seen:
            raise ValueError(f"segment {s} is not contiguous; the packed layout needs one run per segment")
        seen.add(s)
        if s == p:
            prompts[s] = (a, b)
            spans.append((a, b, a, a))
        elif p in prompts:
            spans.append((a, b, *prompts[p]))
        else:
            raise ValueError(f"segment {s} at position {a} comes before its prompt (segment {p})")
    return spans


@dataclass
class SegmentLayout:
    """Query/key sequences of the segmented and flash backends (see module docstring).

    ``spans``: per query sequence ``(q_start, q_end, prefix_start, prefix_end)`` in packed positions, in order and
    covering ``[0, L)``; the prefix (the segment's prompt) is empty for a prompt. ``kv_index`` gathers the packed
    keys into the concatenated key sequences ``prefix ⊕ own`` delimited by ``cu_seqlens_k``.
    """

    spans: list[tuple[int, int, int, int]]
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    kv_index: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int


def segment_layout(segment_ids: torch.Tensor, prompt_segment_ids: torch.Tensor | None = None) -> SegmentLayout:
    """Derive the per-segment layout; every segment must be one contiguous run placed after its prompt."""
    spans = segment_runs(segment_ids, _prompt_segments(segment_ids, prompt_segment_ids))
    kv_index: list[int] = []
    cu_k, cu_q = [0], [0]
    for a, b, pa, pb in spans:
        kv_index.extend(range(pa, pb))
        kv_index.extend(range(a, b))
        cu_k.append(len(kv_index))
        cu_q.append(b)
    return SegmentLayout(
        spans=spans,
        cu_seqlens_q=torch.tensor(cu_q, dtype=torch.int32, device=segment_ids.device),
        cu_seqlens_k=torch.tensor(cu_k, dtype=torch.int32, device=segment_ids.device),
        kv_index=torch.tensor(kv_index, dtype=torch.long, device=segment_ids.device),
        max_seqlen_q=max(b - a for a, b, _, _ in spans),
        max_seqlen_k=max((b - a) + (pb - pa) for a, b, pa, pb in spans),
    )


# ---------------------------------------------------------------------------------------------------- kernels


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def flex_kernel(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_mask: BlockMask, scaling: float | None, compiled
) -> torch.Tensor:
    global _compiled_flex
    fn = flex_attention
    if compiled:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention)
        fn = _compiled_flex
    gqa = query.shape[1] != key.shape[1]
    if compiled:
        return fn(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=gqa)
    with warnings.catch_warnings():  # eager was asked for; torch's "use torch.compile" warning is noise here
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return fn(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=gqa)


def _first_query_span(layout: SegmentLayout, offset: int) -> int:
    """Index of the first span with queries when the first ``offset`` keys have none (a prompt computed in an
    earlier call and prepended through ``mem1_prefix_kv``); they must end at a span boundary."""
    starts = [a for a, _, _, _ in layout.spans]
    if offset == 0:
        return 0
    if offset not in starts:
        raise ValueError(f"the {offset} prepended keys do not end at a segment boundary of the layout")
    return starts.index(offset)


def segmented_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: SegmentLayout,
    scaling: float | None,
    dropout: float,
) -> torch.Tensor:
    n_rep = query.shape[1] // key.shape[1]
    gqa = {}
    if n_rep > 1 and query.device.type == "cpu":
        gqa = {"enable_gqa": True}  # no H/Hkv-times copy of K/V; elsewhere repeat so fused masked kernels apply
    elif n_rep > 1:
        key, value = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
    # Split once at the segment boundaries (views; their backward is one concatenation) rather than slicing per
    # segment: each slice's backward would zero-fill and add a gradient the size of the whole packed row.
    sizes = [b - a for a, b, _, _ in layout.spans]
    if sum(sizes) != key.shape[2]:
        raise ValueError(f"the segment layout covers {sum(sizes)} keys, the attention call has {key.shape[2]}")
    first = _first_query_span(layout, key.shape[2] - query.shape[2])
    k_parts, v_parts = key.split(sizes, dim=2), value.split(sizes, dim=2)
    q_parts = (None,) * first + query.split(sizes[first:], dim=2)
    part_at = {a: i for i, (a, _, _, _) in enumerate(layout.spans)}
    outs = []
    for i, (_, _, pa, pb) in enumerate(layout.spans):
        if i < first:
            continue
        q = q_parts[i]
        if pa == pb:
            o = torch.nn.functional.scaled_dot_product_attention(
                q, k_parts[i], v_parts[i], is_causal=True, dropout_p=dropout, scale=scaling, **gqa
            )
            outs.append(o)
            continue
        k = torch.cat([k_parts[part_at[pa]], k_parts[i]], dim=2)
        v = torch.cat([v_parts[part_at[pa]], v_parts[i]], dim=2)
        p = pb - pa
        # A masked SDPA computes every tile of its rectangle, so the segment's queries go in row blocks, each
        # against the keys it can reach (prefix + segment up to its last row), which skips most of the masked tiles.
        r0 = 0
        for q_rows in q.split(SEGMENTED_ROW_BLOCK, dim=2):
            r1 = r0 + q_rows.shape[2]
            rows = torch.arange(r0, r1, device=q.device)[:, None]
            cols = torch.arange(p + r1, device=q.device)[None, :]
            mask = (cols < p) | (cols - p <= rows)
            outs.append(
                torch.nn.functional.scaled_dot_product_attention(
                    q_rows,
                    k[:, :, : p + r1],
                    v[:, :, : p + r1],
                    attn_mask=mask,
                    dropout_p=dropout,
                    scale=scaling,
                    **gqa,
                )
            )
            r0 = r1
    return torch.cat(outs, dim=2)


def flash_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: SegmentLayout,
    scaling: float | None,
    dropout: float,
) -> torch.Tensor:
    """[1, H, L, D] q and [1, Hkv, L, D] k/v -> [1, L, H, D]; needs CUDA and fp16/bf16: flash-attn 2's
    ``flash_attn_varlen_func`` when installed, else PyTorch's own ``torch.nn.attention.varlen.varlen_attn`` (the same
    bottom-right-aligned causal rule; checked against the segmented SDPA reference by ``make gpu-check``)."""
    implementation = flash_varlen_implementation()
    if implementation is None:  # pragma: no cover - GPU only
        raise ImportError("backend 'flash' needs flash-attn or torch.nn.attention.varlen (CUDA only)")
    if query.device.type != "cuda":
        raise RuntimeError("backend 'flash' runs on CUDA only; use 'flex' or 'segmented' elsewhere")
    if query.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"backend 'flash' needs fp16/bf16 activations, got {query.dtype}")
    device = query.device
    offset = key.shape[2] - query.shape[2]  # prepended prompt keys without queries (segment-group training)
    first = _first_query_span(layout, offset)
    cu_q, cu_k = layout.cu_seqlens_q[first:] - offset, layout.cu_seqlens_k[first:]
    kv_index = layout.kv_index[int(cu_k[0]) :].to(device)
    q = query[0].transpose(0, 1).contiguous()  # [L, H, D]
    k = key[0].transpose(0, 1).index_select(0, kv_index)  # [Σ (P + n), Hkv, D]
    v = value[0].transpose(0, 1).index_select(0, kv_index)
    cu_q, cu_k = cu_q.to(device), (cu_k - cu_k[0]).to(device)
    if implementation == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        out = flash_attn_varlen_func(
            q,
            k,
            v,
            cu_seqlens_q=cu_q,
            cu_seqlens_k=cu_k,
            max_seqlen_q=layout.max_seqlen_q,
            max_seqlen_k=layout.max_seqlen_k,
            dropout_p=dropout,
            softmax_scale=scaling,
            causal=True,  # bottom-right aligned (flash-attn >= 2.1): all prefix keys, causal over the segment
        )
        return out.unsqueeze(0)
    if dropout:
        raise ValueError("PyTorch's varlen_attn has no dropout; install flash-attn or set attention dropout to 0")
    from torch.nn.attention.varlen import varlen_attn

    kwargs, repeat_kv = varlen_attn_kwargs(inspect.signature(varlen_attn), q.shape[1], k.shape[1])
    if repeat_kv:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    out = varlen_attn(
        q, k, v, cu_q.to(torch.int32), cu_k.to(torch.int32), layout.max_seqlen_q, layout.max_seqlen_k, scale=scaling,
        **kwargs,
    )  # fmt: skip
    return out.unsqueeze(0)


def varlen_attn_kwargs(signature: inspect.Signature, query_heads: int, kv_heads: int) -> tuple[dict, bool]:
    """Causal (bottom-right) and GQA keywords for the installed ``varlen_attn``, and whether K/V must be repeated.

    Its signature moved between releases: torch 2.10 takes ``is_causal``, 2.11 ``window_size`` (``(-1, 0)``: causal),
    and ``enable_gqa`` came after 2.11; without it, K/V are repeated to the query heads (head h reads K/V head
    ``h // (query_heads // kv_heads)``, as GQA does).

    Returns:
        (keywords, repeat_kv).
    """
    names = signature.parameters
    if "window_size" in names:
        kwargs: dict = {"window_size": (-1, 0)}
    elif "is_causal" in names:
        kwargs = {"is_causal": True}
    else:
        raise TypeError(f"torch's varlen_attn{signature} takes neither window_size nor is_causal")
    grouped = query_heads != kv_heads
    if grouped and "enable_gqa" in names:
        kwargs["enable_gqa"] = True
        return kwargs, False
    return kwargs, grouped


def flash_varlen_implementation() -> str | None:
    """What the ``flash`` backend runs on: ``flash_attn``, ``torch_varlen`` (PyTorch's own
    ``torch.nn.attention.varlen.varlen_attn``), or None (neither is installed)."""
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attn"
    if importlib.util.find_spec("torch.nn.attention.varlen") is not None:
        return "torch_varlen"
    return None


def flash_varlen_available() -> bool:
    """The ``flash`` backend can run here: CUDA and an implementation (``flash_varlen_implementation``)."""
    return torch.cuda.is_available() and flash_varlen_implementation() is not None


# -------------------------------------------------------------------------------------- choosing a backend


def attention_backend(configured: str, device_type: str) -> str:
    """The packed-attention backend a process runs on ``device_type``: the one resolver, for verl's RL and SFT
    engines alike.

    ``$MEM1_ATTENTION_BACKEND`` (a worker-level override) wins over the configured ``mem1.attention``. ``auto`` is
    ``flash`` on CUDA where flash-attn or PyTorch's ``varlen_attn`` is installed, else ``segmented`` (memory linear in
    the segments' lengths): never ``flex``, which an engine that cannot compile it runs eagerly, materialising every
    score (tens of GB per layer at a 7B recipe's token budget). On CPU ``flex`` runs as ``segmented``: the same rule,
    exact, while torch has no CPU flex backward and its eager CPU flex materialises every score.
    """
    import os

    from verl_mem1.config import ATTENTION_BACKENDS, ATTENTION_ENV, AUTO, ConfigError

    name = (os.environ.get(ATTENTION_ENV) or configured or AUTO).strip().lower()
    if name not in ATTENTION_BACKENDS:
        source = f"${ATTENTION_ENV}" if os.environ.get(ATTENTION_ENV) else "mem1.attention"
        raise ConfigError(f"{source}={name!r}: choose one of {', '.join(ATTENTION_BACKENDS)}")
    if device_type != "cuda" and name in (AUTO, "flex"):
        return "segmented"
    if name != AUTO:
        return name
    return "flash" if flash_varlen_implementation() is not None else "segmented"
