"""Independent re-computations the tests compare project code against (plain transformers only)."""

from __future__ import annotations

import torch

from verl_mem1.rollout.backends.base import Generation, SamplingConfig


def recompute_logprobs(model, context: list[int], generated: list[int], temperature: float) -> list[float]:
    """Log-probs of ``generated`` after ``context`` from one unpadded, uncached forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(context) + list(generated)])).logits[0].float()
    logp = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
    return [float(logp[len(context) - 1 + j, t]) for j, t in enumerate(generated)]


class ScriptedBackend:
    """Replays given turn texts, scoring them with the real tiny model (a stand-in for a trained policy)."""

    def __init__(self, model, tokenizer, texts: list[str]):
        self.model, self.tokenizer, self.texts = model, tokenizer, list(texts)
        self.contexts: list[list[int]] = []

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        self.contexts.append(list(prompt_ids))
        ids = self.tokenizer.encode(self.texts.pop(0), add_special_tokens=False)
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([prompt_ids + ids])).logits[0]
        logp = torch.log_softmax(logits / sampling.temperature, dim=-1)
        lps = [float(logp[len(prompt_ids) - 1 + j, t]) for j, t in enumerate(ids)]
        return Generation(ids, lps, "stop")
