"""Independent re-computations the tests compare project code against (plain transformers only)."""

from __future__ import annotations

import subprocess
import time

import httpx
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


def wait_until_healthy(proc: subprocess.Popen, url: str, timeout_s: float = 60.0) -> dict:
    """Poll ``url/health`` until it answers 200 (its JSON is returned); fail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "server exited"
        try:
            response = httpx.get(f"{url}/health", timeout=1.0)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.1)
