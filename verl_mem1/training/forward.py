"""Training-time log-probs, entropies and values of the generated tokens of packed MEM1 episodes.

Logits are computed only at the predictor positions (the positions whose logits predict a generated token), so
no ``L × V`` tensor exists; for plain-head models the LM head is applied to the gathered hidden states in chunks,
so not even ``N × V`` for the ``N`` generated tokens (see ``packed_logprobs_and_entropy``). Every
output is in packed order (episode by episode, turn by turn, token by token), aligned with
``sample.rollout_logprobs[sample.loss_mask.bool()]``.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING

import torch

from verl_mem1.training.attention import PACKED_BACKENDS
from verl_mem1.training.head import (
    DEFAULT_LOGITS_CHUNK,
    chunked_head_logprobs,
    generated_temperatures,
    logprobs_from_logits,
    plain_head,
)
from verl_mem1.training.hf_attention import model_device, packed_model_call
from verl_mem1.training.layout import PackedSample, pack_episode, per_turn_samples

if TYPE_CHECKING:
    from verl_mem1.records import EpisodeRecord

logger = logging.getLogger(__name__)
_warned_flex_fallback = False


def resolve_backend(model: torch.nn.Module, backend: str) -> str:
    """The backend that will actually run: ``flex`` on CPU under autograd becomes ``segmented``.

    Torch has no flex-attention backward on CPU (2.13 raises), and ``segmented`` computes the same rule with
    ordinary SDPA per segment — exact, autograd-friendly, no L×L tensor.
    """
    global _warned_flex_fallback
    if backend not in PACKED_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {PACKED_BACKENDS}")
    if backend == "flex" and model_device(model).type == "cpu" and torch.is_grad_enabled():
        if any(p.requires_grad for p in model.parameters()):
            if not _warned_flex_fallback:
                logger.warning("flex attention has no CPU backward in torch; using the 'segmented' backend on CPU")
                _warned_flex_fallback = True
            return "segmented"
    return backend


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _predictor_logits(model: torch.nn.Module, sample: PackedSample, run) -> torch.Tensor:
    """Logits at the predictor positions, ``[N, V]``, with ``run(**kw)`` doing the forward."""
    device = model_device(model)
    predictors = sample.predictor_index[sample.loss_mask.bool()].to(device)
    if _accepts_logits_to_keep(model):
        return run(logits_to_keep=predictors).logits[0]
    return run().logits[0].index_select(0, predictors)  # models without logits_to_keep: full logits


def packed_logprobs_and_entropy(
    model: torch.nn.Module,
    sample: PackedSample,
    *,
    backend: str = "flex",
    temperature: float | None = None,
    compile_flex: bool = True,
    with_entropy: bool = True,
    logits_chunk: int | None = DEFAULT_LOGITS_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (``log_softmax(logits / T)`` of each generated token) and entropies, in packed order.

    ``temperature`` overrides the recorded one. ``backend``: ``flex`` (default), ``dense``, ``segmented``,
    ``flash`` (see ``attention.py``); ``flex`` on CPU with gradients runs ``segmented``.

    Logits exist only for the ``N`` generated tokens. For plain-head models (``PLAIN_HEAD_MODEL_TYPES``) the
    decoder runs alone, its hidden states are gathered at the predictor positions and the LM head is applied
    ``logits_chunk`` rows at a time (checkpointed under autograd), so at most ``logits_chunk × V`` logits are
    alive; other models (or ``logits_chunk=None``) get the ``N × V`` logits through ``logits_to_keep``.
    """
    backend = resolve_backend(model, backend)
    device = model_device(model)
    gen = sample.loss_mask.bool()
    targets = sample.input_ids[gen].to(device)
    temperatures = generated_temperatures(sample, temperature, device)
    plain = plain_head(model) if logits_chunk else None

    def run(target: torch.nn.Module, **kw):
        return packed_model_call(
            target,
            sample.input_ids,
            sample.position_ids,
            sample.segment_ids,
            sample.prompt_segment_ids,
            backend=backend,
            compile_flex=compile_flex,
            **kw,
        )

    if plain is not None:
        decoder, head = plain
        hidden = run(decoder).last_hidden_state[0]
        hidden = hidden.index_select(0, sample.predictor_index[gen].to(device))
        return chunked_head_logprobs(hidden, head, targets, temperatures, with_entropy, int(logits_chunk))
    logits = _predictor_logits(model, sample, lambda **kw: run(model, **kw))
    return logprobs_from_logits(logits, targets, temperatures, with_entropy)


def packed_logprobs(
    model: torch.nn.Module,
    sample: PackedSample,
    *,
    backend: str = "flex",
    temperature: float | None = None,
    compile_flex: bool = True,
    logits_chunk: int | None = DEFAULT_LOGITS_CHUNK,
) -> torch.Tensor:
    """Log-probs of the generated tokens of a packed sample, in packed order (differentiable)."""
    logprobs, _ = packed_logprobs_and_entropy(
        model,
        sample,
        backend=backend,
        temperature=temperature,
        compile_flex=compile_flex,
        with_entropy=False,
        logits_chunk=logits_chunk,
    )
    return logprobs


def packed_values(
    critic: torch.nn.Module, sample: PackedSample, backend: str = "flex", *, compile_flex: bool = True
) -> torch.Tensor:
    """Critic values for the generated tokens, in packed order.

    ``critic`` is a token-classification model with one label (verl's critic: ``AutoModelForTokenClassification``
    with ``num_labels=1``). Convention (verl's): the value of generated token ``k`` is the critic's output at the
    position *before* it — its predictor position, i.e. the state the token was sampled from; for a segment's
    first token with no context copy that is the last prompt position.
    """
    backend = resolve_backend(critic, backend)
    out = packed_model_call(
        critic,
        sample.input_ids,
        sample.position_ids,
        sample.segment_ids,
        sample.prompt_segment_ids,
        backend=backend,
        compile_flex=compile_flex,
    )
    values = out.logits[0]
    if values.dim() == 2:
        if values.shape[-1] != 1:
            raise ValueError(f"a critic has one output per token, got {values.shape[-1]}")
        values = values[:, 0]
    predictors = sample.predictor_index[sample.loss_mask.bool()].to(values.device)
    return values.index_select(0, predictors).float()


def per_turn_logprobs_and_entropy(
    model: torch.nn.Module, record: EpisodeRecord, *, temperature: float | None = None, with_entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The per-turn alternative: one plain causal forward per turn over ``context_t ⊕ generated_t``."""
    device = model_device(model)
    logprobs, entropies = [], []
    for sample in per_turn_samples(record):

        def run(_s=sample, **kw):
            return model(input_ids=_s.input_ids.to(device)[None], use_cache=False, **kw)

        logits = _predictor_logits(model, sample, run)
        targets = sample.input_ids[sample.loss_mask.bool()].to(device)
        lp, ent = logprobs_from_logits(
            logits, targets, generated_temperatures(sample, temperature, device), with_entropy
        )
        logprobs.append(lp)
        if ent is not None:
            entropies.append(ent)
    empty = torch.zeros(0, device=device)
    lp_all = torch.cat(logprobs) if logprobs else empty
    ent_all = (torch.cat(entropies) if entropies else empty) if with_entropy else None
    return lp_all, ent_all


def per_turn_logprobs(model: torch.nn.Module, record: EpisodeRecord, *, temperature: float | None = None):
    """Log-probs of every generated token from per-turn forwards, in the same order as the packed ones."""
    logprobs, _ = per_turn_logprobs_and_entropy(model, record, temperature=temperature, with_entropy=False)
    return logprobs


def episode_logprobs(
    model: torch.nn.Module,
    record: EpisodeRecord,
    *,
    backend: str = "flex",
    temperature: float | None = None,
    compile_flex: bool = True,
) -> torch.Tensor:
    """Convenience: ``per_turn``, ``segment_groups`` (one segment per group) or a packed backend for one episode
    record."""
    if backend == "per_turn":
        return per_turn_logprobs(model, record, temperature=temperature)
    if backend == "segment_groups":
        from verl_mem1.training.streaming import streamed_logprobs_and_entropy  # streaming builds on this module

        logprobs, _ = streamed_logprobs_and_entropy(
            model, pack_episode(record), group_tokens=1, temperature=temperature, with_entropy=False
        )
        return logprobs
    return packed_logprobs(
        model, pack_episode(record), backend=backend, temperature=temperature, compile_flex=compile_flex
    )
