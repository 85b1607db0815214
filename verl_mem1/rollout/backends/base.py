"""The one interface between the episode loop and any LLM: token ids in, token ids and log-probs out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling for one generation call.

    Log-probs are always recorded as ``log_softmax(logits / temperature)`` of the sampled token, before
    top-p/top-k truncation: that is the behaviour policy PPO's importance ratio needs. With
    ``temperature == 0`` decoding is greedy and log-probs are taken at temperature 1.
    """

    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off) or >= 1, got {self.top_k}")


@dataclass
class Generation:
    """What one call produced. ``token_ids`` include the stop string's tokens and any EOS token sampled."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"{len(self.token_ids)} token ids but {len(self.logprobs)} log-probs")


@runtime_checkable
class LLMBackend(Protocol):
    """Anything that can continue a token sequence. Implementations must be safe to call concurrently."""

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation: ...


def find_stop(text: str, stops: tuple[str, ...]) -> bool:
    """True when ``text`` contains any stop string (callers pass only the recently decoded tail)."""
    return any(s in text for s in stops)
