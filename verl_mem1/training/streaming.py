"""Segment-group training: the packed forward+backward, exactly, in memory bounded by a group of segments.

One packed row holds every activation of an episode until ``backward`` — at 16 objectives (20k tokens) that is
gigabytes, and on CPU holding them (fresh memory, page faults, no cache reuse) makes every token dearer than in a
short per-turn sample that is freed before the next. Segment groups keep the packed layout's saving (the prompt is
computed once) with per-turn-sized working sets:

1. the prompt runs once; its keys/values of every layer (and its last hidden state, the predictor of a segment
   that starts with a generated token) are kept and cut from the graph as leaves;
2. each group of whole segments (at most ``group_tokens`` tokens) runs with the prompt's keys/values prepended in
   attention (``mem1_prefix_kv``), its outputs (the policy's log-probs) go to
   ``group_loss`` and that loss is back-propagated at once, freeing the group's activations and accumulating the
   gradient of the prompt's keys/values;
3. the accumulated gradients are back-propagated through the prompt.

Every token sees exactly the keys it sees in the packed row, so log-probs match the packed forward and the
gradient is the packed gradient — provided the loss is a sum of per-token terms (each group's loss may only
depend on its own tokens' outputs; PPO/GRPO's clipped policy loss, entropy and KL terms and the clipped value
loss are).

Used by ``mem1 parity`` (backend ``segment_groups``) and the SFT reference loss (``sft.sft_nll``); verl's RL engine
back-propagates one packed row per micro-batch (its loss function sees the whole micro-batch), so RL on verl does not
use it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from verl_mem1.training.attention import segment_layout, segment_runs
from verl_mem1.training.head import (
    DEFAULT_LOGITS_CHUNK,
    PLAIN_HEAD_MODEL_TYPES,
    chunked_head_logprobs,
    generated_temperatures,
    plain_head,
)
from verl_mem1.training.hf_attention import enable_packed_attention, model_device, skip_mask_creation
from verl_mem1.training.layout import PackedSample

DEFAULT_GROUP_TOKENS = 2048
# A group's logits are kept for backward (no recompute) when they have at most this many entries (256 MB in fp32).
HEAD_KEEP_ELEMENTS = 1 << 26
GroupLoss = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


def segment_groups(sample: PackedSample, group_tokens: int) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """Per episode: ``((prompt_start, prompt_end), [(group_start, group_end), ...])`` in packed positions.

    A group is a run of whole, adjacent segments of one episode with at most ``group_tokens`` tokens (a longer
    segment is a group of its own: segments are never split).
    """
    if group_tokens < 1:
        raise ValueError(f"group_tokens must be >= 1, got {group_tokens}")
    episodes: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for a, b, pa, pb in segment_runs(sample.segment_ids, sample.prompt_segment_ids):
        if pa == pb:
            episodes[(a, b)] = []
            continue
        groups = episodes[(pa, pb)]
        if groups and groups[-1][1] == a and b - groups[-1][0] <= group_tokens:
            groups[-1] = (groups[-1][0], b)
        else:
            groups.append((a, b))
    return list(episodes.items())


def _stream(
    model: torch.nn.Module,
    decoder: torch.nn.Module,
    sample: PackedSample,
    outputs: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor | None, ...]],
    group_loss: Callable[..., torch.Tensor] | None,
    group_tokens: int,
    backend: str,
    num_outputs: int,
) -> list[torch.Tensor | None]:
    """The three steps of the module docstring. ``outputs(hidden, index)`` maps the hidden states at a group's
    predictor positions (its generated tokens' places ``index`` in packed order) to per-token outputs;
    ``group_loss(*outputs, index)`` is back-propagated per group. Returns each of the ``num_outputs`` outputs over
    all generated tokens, detached, in packed order (``None`` for an output the groups returned as ``None``)."""
    enable_packed_attention(model)
    backend = "flash" if backend == "flash" else "segmented"  # the kernels that take prepended keys/values
    device = model_device(model)
    train = group_loss is not None and torch.is_grad_enabled()
    ids, pos = sample.input_ids.to(device), sample.position_ids.to(device)
    seg, pseg = sample.segment_ids, sample.prompt_segment_ids
    gen = sample.loss_mask.bool()
    rank = torch.cumsum(sample.loss_mask, 0) - 1  # place of each generated token in packed order
    results: list[torch.Tensor | None] = [None] * num_outputs

    def run(a: int, b: int, layout_seg: torch.Tensor, layout_pseg: torch.Tensor, **kw) -> torch.Tensor:
        with skip_mask_creation():
            out = decoder(
                input_ids=ids[None, a:b],
                position_ids=pos[None, a:b],
                use_cache=False,
                mem1_backend=backend,
                mem1_layout=segment_layout(layout_seg, layout_pseg),
                **kw,
            )
        return out.last_hidden_state[0]

    for (pa, pb), groups in segment_groups(sample, group_tokens):
        collected: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        last = run(pa, pb, seg[pa:pb], pseg[pa:pb], mem1_collect_kv=collected)[-1:]
        prompt_kv = [collected[i] for i in range(len(collected))]
        if train:
            prefix = [(k.detach().requires_grad_(), v.detach().requires_grad_()) for k, v in prompt_kv]
            last_leaf = last.detach().requires_grad_()
        else:
            prefix, last_leaf = prompt_kv, last
        for a, b in groups:
            hidden = run(
                a, b, torch.cat([seg[pa:pb], seg[a:b]]), torch.cat([pseg[pa:pb], pseg[a:b]]), mem1_prefix_kv=prefix
            )
            own = gen[a:b]
            predictors = sample.predictor_index[a:b][own]
            outside = predictors < a
            if bool((predictors[outside] != pb - 1).any()):
                raise ValueError("a generated token's predictor is neither in its segment nor the last prompt token")
            local = torch.where(outside, 0, predictors - a + 1).to(device)  # row 0: the prompt's last hidden state
            index = rank[a:b][own].to(device)
            outs = outputs(torch.cat([last_leaf, hidden]).index_select(0, local), index)
            if train:
                loss = group_loss(*outs, index)
                if loss.requires_grad:
                    loss.backward()
            for k, out in enumerate(outs):
                if out is not None:
                    if results[k] is None:
                        results[k] = torch.zeros(sample.num_generated, dtype=out.dtype, device=device)
                    results[k][index] = out.detach()
        if train:  # the prompt's share: back-propagate what its keys/values and last state accumulated
            pairs = [
                (t, leaf.grad)
                for kv, leaves in zip(prompt_kv, prefix, strict=True)
                for t, leaf in zip(kv, leaves, strict=True)
            ]
            pairs.append((last, last_leaf.grad))
            pairs = [(t, g) for t, g in pairs if g is not None]
            if pairs:
                torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
    return results


def streamed_logprobs_and_entropy(
    model: torch.nn.Module,
    sample: PackedSample,
    group_loss: GroupLoss | None = None,
    *,
    group_tokens: int = DEFAULT_GROUP_TOKENS,
    backend: str = "segmented",
    temperature: float | None = None,
    with_entropy: bool = True,
    logits_chunk: int | None = DEFAULT_LOGITS_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropies) of the generated tokens in packed order, detached, computed group by group.

    With ``group_loss`` and gradients enabled, ``group_loss(logprobs, entropies, index)`` is called per group —
    ``index`` holds the group's tokens' places in packed order — and its result is back-propagated into the
    model's ``.grad`` (accumulating, like ``loss.backward()``), so after the call the gradients equal those of
    ``Σ_groups group_loss`` over the packed forward. ``backend``: ``flash`` (CUDA) or anything else for the
    ``segmented`` kernel. Needs a plain-head model (``forward.PLAIN_HEAD_MODEL_TYPES``).

    The LM head runs on a group's generated tokens at once, its logits kept for backward, when they have at most
    ``HEAD_KEEP_ELEMENTS`` entries; otherwise ``logits_chunk`` rows at a time, recomputed in backward (as in
    ``packed_logprobs_and_entropy``).
    """
    plain = plain_head(model)
    if plain is None:
        raise TypeError(
            "segment-group training needs a model whose logits are a plain linear head over its decoder "
            f"(model types {sorted(PLAIN_HEAD_MODEL_TYPES)}), got {type(model).__name__}"
        )
    decoder, head = plain
    device = model_device(model)
    targets = sample.input_ids[sample.loss_mask.bool()].to(device)
    temperatures = generated_temperatures(sample, temperature, device)

    def logprobs(hidden: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        keep = not logits_chunk or index.numel() * head.out_features <= HEAD_KEEP_ELEMENTS
        lp, ent = chunked_head_logprobs(
            hidden,
            head,
            targets[index],
            temperatures[index],
            with_entropy,
            max(1, index.numel()) if keep else int(logits_chunk),
            recompute=not keep,
        )
        return lp, ent

    lp, ent = _stream(model, decoder, sample, logprobs, group_loss, group_tokens, backend, 2)
    empty = torch.zeros(0, device=device)  # no group: nothing generated
    return (empty if lp is None else lp), ((empty if ent is None else ent) if with_entropy else None)
