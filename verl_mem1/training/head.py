"""Log-probs from a causal LM's head at the predictor positions, for the packed forward (``forward.py``) and the
segment-group forward (``streaming.py``) alike: the one place that knows which models have a plain linear head
(so the head can be applied by us, in chunks, to gathered hidden states) and how temperatures scale the logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from verl_mem1.training.layout import PackedSample


def logprobs_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, temperatures: torch.Tensor, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    logits = logits.float()
    if bool((temperatures != 1).any()):  # skip an N x V copy in the common T = 1 case
        logits = logits / temperatures[:, None]
    logp = torch.log_softmax(logits, dim=-1)
    token = logp.gather(-1, targets[:, None])[:, 0]
    entropy = -(logp.exp() * logp).sum(-1) if with_entropy else None
    return token, entropy


# Model types whose logits are exactly ``lm_head(decoder(...).last_hidden_state)`` (no soft-capping or scaling),
# so the head can be applied by us, in chunks, to the gathered predictor hidden states.
PLAIN_HEAD_MODEL_TYPES = frozenset({"qwen2", "qwen3", "llama", "mistral", "qwen2_moe", "qwen3_moe"})
DEFAULT_LOGITS_CHUNK = 1024


def plain_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """``(decoder, lm_head)`` when the model's logits are a plain linear head over the decoder's output."""
    if getattr(getattr(model, "config", None), "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    get_decoder, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    if not callable(get_decoder) or not callable(get_head):
        return None
    decoder, head = get_decoder(), get_head()
    if decoder is None or decoder is model or not isinstance(head, torch.nn.Linear):
        return None
    return decoder, head


def head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperatures: torch.Tensor,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.nn.functional.linear(hidden, weight, bias)
    token, entropy = logprobs_from_logits(logits, targets, temperatures, with_entropy)
    return token, entropy if entropy is not None else token.new_zeros(0)


def chunked_head_logprobs(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    targets: torch.Tensor,
    temperatures: torch.Tensor,
    with_entropy: bool,
    chunk: int,
    recompute: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply the head ``chunk`` rows at a time; under autograd (and ``recompute``) each chunk is checkpointed, so
    only the hidden states are kept and the ``chunk × V`` logits are recomputed in backward (peak: one chunk, not
    ``N × V``)."""
    from torch.utils.checkpoint import checkpoint

    tokens, entropies = [], []
    grad = torch.is_grad_enabled() and recompute
    for i in range(0, hidden.shape[0], chunk):
        args = (hidden[i : i + chunk], head.weight, head.bias, targets[i : i + chunk], temperatures[i : i + chunk])
        if grad:
            token, entropy = checkpoint(head_logprobs, *args, with_entropy, use_reentrant=False)
        else:
            token, entropy = head_logprobs(*args, with_entropy)
        tokens.append(token)
        entropies.append(entropy)
    empty = hidden.new_zeros(0, dtype=torch.float32)
    token = torch.cat(tokens) if tokens else empty
    return token, ((torch.cat(entropies) if entropies else empty) if with_entropy else None)


def generated_temperatures(sample: PackedSample, temperature: float | None, device: torch.device) -> torch.Tensor:
    if temperature is not None:
        t = temperature if temperature > 0 else 1.0
        return torch.full((sample.num_generated,), float(t), device=device)
    return sample.generated_temperatures().to(device)
