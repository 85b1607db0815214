"""Context policies: which recorded turns the model sees when it generates the next one.

Policies work on token ids exactly as they were sampled and appended, never on re-tokenized text: training must
score each token under the very context it was sampled in, and decode/encode round trips are not the identity.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["ContextPolicy", "FullContext", "Mem1Context", "TurnTokens", "WindowContext", "parse_context_policy"]


@dataclass(frozen=True)
class TurnTokens:
    """One finished turn as recorded by the rollout."""

    generated_ids: Sequence[int]  # internal state + action, as sampled
    observation_ids: Sequence[int]  # appended after it; empty for the final answer turn


def _last_turns(prompt_ids: Sequence[int], turns: Sequence[TurnTokens], k: int | None) -> list[int]:
    """Prompt followed by the last ``k`` turns (all turns when ``k`` is None), in order."""
    kept = turns if k is None else turns[max(0, len(turns) - k) :]
    ids = list(prompt_ids)
    for turn in kept:
        ids.extend(turn.generated_ids)
        ids.extend(turn.observation_ids)
    return ids


class ContextPolicy(ABC):
    """Builds the next turn's input ids from the prompt and the turns so far."""

    name: str  # the spec ``parse_context_policy`` accepts: "mem1" | "full" | "window:K"

    @abstractmethod
    def build(self, prompt_ids: Sequence[int], turns: Sequence[TurnTokens]) -> list[int]: ...

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Mem1Context(ContextPolicy):
    """MEM1: the prompt plus only the last turn, whose internal state carries everything the agent kept."""

    name: str = field(default="mem1", init=False)

    def build(self, prompt_ids: Sequence[int], turns: Sequence[TurnTokens]) -> list[int]:
        return _last_turns(prompt_ids, turns, 1)


@dataclass(frozen=True)
class FullContext(ContextPolicy):
    """Baseline: append every turn; context grows linearly with the number of turns."""

    name: str = field(default="full", init=False)

    def build(self, prompt_ids: Sequence[int], turns: Sequence[TurnTokens]) -> list[int]:
        return _last_turns(prompt_ids, turns, None)


@dataclass(frozen=True)
class WindowContext(ContextPolicy):
    """Truncation baseline: the prompt plus the last ``k`` turns."""

    k: int
    name: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"window size must be a positive int, got {self.k!r}")
        object.__setattr__(self, "name", f"window:{self.k}")

    def build(self, prompt_ids: Sequence[int], turns: Sequence[TurnTokens]) -> list[int]:
        return _last_turns(prompt_ids, turns, self.k)


_WINDOW_RE = re.compile(r"window:([0-9]+)")


def parse_context_policy(spec: str) -> ContextPolicy:
    """Parse a policy spec from a config or the command line: "mem1", "full" or "window:K" (K >= 1)."""
    text = spec.strip() if isinstance(spec, str) else ""
    if text == "mem1":
        return Mem1Context()
    if text == "full":
        return FullContext()
    match = _WINDOW_RE.fullmatch(text)
    if match and int(match.group(1)) >= 1:
        return WindowContext(int(match.group(1)))
    raise ValueError(f"invalid context policy {spec!r}; expected 'mem1', 'full' or 'window:K' with K a positive int")
