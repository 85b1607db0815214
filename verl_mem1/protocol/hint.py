"""Observation text: the turns-left hint, the observation wrapper, and Search-R1's document formatting.

The hint opens every observation because a MEM1 agent's context is dropped each turn: the observation is the
only place it can learn how many turns remain, and it must know when the next turn is its last.
"""

from __future__ import annotations

from collections.abc import Sequence

from verl_mem1.protocol.tags import PAPER, TagSet

__all__ = ["format_documents", "format_invalid_observation", "format_observation", "turns_left_hint"]

# Same [HINT] framing as MEM1's training rollouts, so released checkpoints see the hint they were trained on.
HINT_TEMPLATE = "[HINT]You have {turns_left} turns left.[/HINT]"
LAST_TURN_HINT_TEMPLATE = "[HINT]You have 1 turn left. This is your last turn: you must {order}.[/HINT]"
ANSWER_ORDER = "answer now with {answer_open}…{answer_close}"
OBSERVATION_TEMPLATE = "\n\n{info_open}{hint}\n{body}{info_close}\n\n"
INVALID_BODY_TEMPLATE = (
    "Your previous action was invalid: {reason}. "
    "Respond with {state_open}…{state_close} then {query_open}…{query_close}{or_answer}."
)
OR_ANSWER = " or {answer_open}…{answer_close}"


def turns_left_hint(turns_left: int, tags: TagSet = PAPER) -> str:
    """Hint for an agent that still has ``turns_left`` turns, the next one included."""
    if isinstance(turns_left, bool) or not isinstance(turns_left, int):
        raise TypeError(f"turns_left must be an int, got {type(turns_left).__name__}")
    if turns_left < 1:
        raise ValueError(f"turns_left must be >= 1, got {turns_left}")
    if turns_left == 1:
        order = (
            tags.last_turn_order
            if not tags.answers
            else ANSWER_ORDER.format(answer_open=tags.open(tags.answer), answer_close=tags.close(tags.answer))
        )
        return LAST_TURN_HINT_TEMPLATE.format(order=order)
    return HINT_TEMPLATE.format(turns_left=turns_left)


def format_observation(body: str, turns_left: int, tags: TagSet = PAPER) -> str:
    """Text appended to the context after a query: the info block, starting with the turns-left hint."""
    return OBSERVATION_TEMPLATE.format(
        info_open=tags.open(tags.info),
        info_close=tags.close(tags.info),
        hint=turns_left_hint(turns_left, tags),
        body=body,
    )


def format_invalid_observation(reason: str, turns_left: int, tags: TagSet = PAPER) -> str:
    """Observation after a malformed turn: says why it was rejected and restates the expected format."""
    body = INVALID_BODY_TEMPLATE.format(
        reason=reason.strip().rstrip(".") or "malformed output",
        state_open=tags.open(tags.state),
        state_close=tags.close(tags.state),
        query_open=tags.open(tags.query),
        query_close=tags.close(tags.query),
        or_answer=OR_ANSWER.format(answer_open=tags.open(tags.answer), answer_close=tags.close(tags.answer))
        if tags.answers
        else "",
    )
    return format_observation(body, turns_left, tags)


def format_documents(docs: Sequence[str]) -> str:
    """Search-R1's rendering of retrieved documents, which MEM1 and its checkpoints were trained on.

    A document's ``contents`` is ``'"Title"\\ntext'``; as in Search-R1 the first line is kept verbatim as the
    title (quotes included). Contents without a newline (or with an empty first line) have no title.
    """
    if isinstance(docs, str):
        raise TypeError("format_documents expects a sequence of document contents, not a single str")
    out = []
    for i, content in enumerate(docs, start=1):
        title, sep, text = content.partition("\n")
        if sep and title.strip():
            out.append(f"Doc {i}(Title: {title}) {text}\n")
        else:
            out.append(f"Doc {i} {text if sep else content}\n")
    return "".join(out)
