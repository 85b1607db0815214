"""Independent re-computations the tests compare project code against (plain transformers only)."""

from __future__ import annotations

import torch


def recompute_logprobs(model, context: list[int], generated: list[int], temperature: float) -> list[float]:
    """Log-probs of ``generated`` after ``context`` from one unpadded, uncached forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(context) + list(generated)])).logits[0].float()
    logp = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
    return [float(logp[len(context) - 1 + j, t]) for j, t in enumerate(generated)]
