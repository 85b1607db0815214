"""Tag sets: the XML-ish markers a MEM1 agent writes and reads.

Two sets exist because the MEM1 paper names its tags ``<IS>``/``<query>``/``<info>`` while the released
checkpoints were trained with Search-R1's ``<think>``/``<search>``/``<information>``; a checkpoint only
behaves if it sees the tags it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PAPER", "SEARCH_R1", "WEBSHOP", "TagSet", "get_tag_set"]


@dataclass(frozen=True)
class TagSet:
    """Names of the four tags of one protocol dialect (names only, without angle brackets)."""

    name: str
    state: str  # internal state, rewritten every turn
    query: str  # search action
    info: str  # observation wrapper written by the environment
    answer: str  # final-answer action
    # False for environments that end episodes themselves (WebShop's purchase): no answer is asked for
    answers: bool = True
    # what the last turn's hint tells an agent that does not answer to do
    last_turn_order: str = ""

    def __post_init__(self) -> None:
        # The parser relies on tags being plain names and on the state/query/answer tags being distinct.
        for field_name in ("state", "query", "info", "answer"):
            tag = getattr(self, field_name)
            if not isinstance(tag, str) or not tag or any(c in tag for c in "<>/") or tag != tag.strip():
                raise ValueError(f"TagSet {self.name!r}: invalid {field_name} tag {tag!r}")
        if len({self.state, self.query, self.answer}) != 3:
            raise ValueError(f"TagSet {self.name!r}: state, query and answer tags must be distinct")

    def open(self, tag: str) -> str:
        return f"<{tag}>"

    def close(self, tag: str) -> str:
        return f"</{tag}>"

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Generation stops right after an action closes, so the environment can respond."""
        return (self.close(self.query), self.close(self.answer))


PAPER = TagSet("paper", state="IS", query="query", info="info", answer="answer")
SEARCH_R1 = TagSet("search_r1", state="think", query="search", info="information", answer="answer")
# WebShop: the action tag carries search[...] or click[...]; a purchase, not an answer, ends the episode.
WEBSHOP = TagSet(
    "webshop",
    state="IS",
    query="action",
    info="info",
    answer="answer",
    answers=False,
    last_turn_order="buy now with <action>click[Buy Now]</action> on an item page, or the episode ends with nothing",
)

_TAG_SETS: dict[str, TagSet] = {
    "paper": PAPER,
    "mem1": PAPER,
    "search_r1": SEARCH_R1,
    "search-r1": SEARCH_R1,
    "webshop": WEBSHOP,
}


def get_tag_set(name: str) -> TagSet:
    """Look up a tag set by the name used in configs and on the command line."""
    key = name.strip().lower() if isinstance(name, str) else name
    try:
        return _TAG_SETS[key]
    except (KeyError, TypeError):
        choices = ", ".join(repr(k) for k in _TAG_SETS)
        raise ValueError(f"unknown tag set {name!r}; choose one of {choices}") from None
