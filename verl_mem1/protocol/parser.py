"""Turn parser: split one generated turn into its internal state and its action.

Generation stops at the first ``</query>`` or ``</answer>``, so the parser reads a turn exactly as far as the
rollout would have let the model write it: up to the first closing action tag. The action is the block that
closes there, opened by the first matching opening tag before it (the reference MEM1/Search-R1 regex
``<(query|answer)>(.*?)</\\1>`` applied to that prefix). Consequences: text after the action never changes the
result, whether or not a backend honoured the stop strings; and a constant number of ``str.find`` scans suffices,
so any model output, however malformed or long, parses in linear time and never raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from verl_mem1.protocol.tags import PAPER, TagSet

__all__ = ["Action", "ActionKind", "ParsedTurn", "parse_turn", "split_answers"]

ActionKind = Literal["query", "answer", "invalid"]


@dataclass(frozen=True)
class Action:
    """What the agent asked for; ``reason`` is shown back to the model when the action is invalid."""

    kind: ActionKind
    text: str
    reason: str = ""


@dataclass(frozen=True)
class ParsedTurn:
    """A turn split into the state the agent keeps (None if it wrote none before acting) and its action."""

    internal_state: str | None
    action: Action


def parse_turn(text: str, tags: TagSet = PAPER, *, require_state: bool = False) -> ParsedTurn:
    """Parse one turn; malformed output yields an ``invalid`` action with a reason instead of raising."""
    if not isinstance(text, str):
        raise TypeError(f"parse_turn expects str, got {type(text).__name__}")
    kinds: tuple[tuple[ActionKind, str], ...] = (("query", tags.query), ("answer", tags.answer))

    # The first closing action tag ends the turn (it is where generation stops).
    closes = [(pos, kind, tag) for kind, tag in kinds if (pos := text.find(tags.close(tag))) != -1]
    limit = min(closes)[0] if closes else len(text)

    action: Action | None = None
    action_start = limit
    if closes:
        _, kind, tag = min(closes)
        start = text.find(tags.open(tag), 0, limit)
        if start != -1:
            action_start = start
            content = text[start + len(tags.open(tag)) : limit]
            nested = (tags.open(tags.query), tags.open(tags.answer), tags.open(tags.state), tags.close(tags.state))
            if any(t in content for t in nested):
                action = Action("invalid", "", f"nested tags inside {tags.open(tag)}")
            elif not content.strip():
                action = Action("invalid", "", f"empty {tag}")
            else:
                action = Action(kind, content.strip())
    if action is None:
        opened = [(pos, tag) for _, tag in kinds if (pos := text.find(tags.open(tag), 0, limit)) != -1]
        if opened:
            action_start, tag = min(opened)
            action = Action("invalid", "", f"unclosed {tags.open(tag)} tag")
        elif closes:
            _, _, tag = min(closes)
            action = Action("invalid", "", f"{tags.close(tag)} without a matching {tags.open(tag)}")
        else:
            action = Action(
                "invalid",
                "",
                f"no action: expected {tags.open(tags.query)}…{tags.close(tags.query)}"
                + (f" or {tags.open(tags.answer)}…{tags.close(tags.answer)}" if tags.answers else ""),
            )

    # The first complete state block, if it ends before the action starts. Only the first opening tag can start
    # one: the first closing tag after any later opening tag is no earlier than the one after the first.
    internal_state: str | None = None
    state_open, state_close = tags.open(tags.state), tags.close(tags.state)
    s_start = text.find(state_open, 0, action_start)
    if s_start != -1:
        s_end = text.find(state_close, s_start + len(state_open), action_start)
        if s_end != -1:
            internal_state = text[s_start + len(state_open) : s_end].strip()

    if require_state and internal_state is None and action.kind != "invalid":
        action = Action("invalid", "", f"missing internal state: expected {state_open}…{state_close} before the action")
    return ParsedTurn(internal_state, action)


def split_answers(answer: str) -> list[str]:
    """Split a multi-objective answer on ';', keeping empty parts so answer i still lines up with question i."""
    return [part.strip() for part in answer.split(";")]
