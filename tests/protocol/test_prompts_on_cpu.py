import re

import pytest

from verl_mem1.protocol import PAPER, SEARCH_R1, TagSet, build_prompt_messages

TAG_SETS = [PAPER, SEARCH_R1]
QUESTIONS = [
    "Who wrote the novel Beloved?",
    "In which year did the Eiffel Tower open?",
    "What is the capital of the country where Mount Kilimanjaro is located?",
    "Which element has atomic number {79}?",  # braces must survive str.format
]


def content(questions: list[str], tags: TagSet = PAPER, **kwargs: object) -> str:
    messages = build_prompt_messages(questions, tags, **kwargs)  # type: ignore[arg-type]
    assert len(messages) == 1 and set(messages[0]) == {"role", "content"}
    assert messages[0]["role"] == "user"
    return messages[0]["content"]


@pytest.mark.parametrize("tags", TAG_SETS, ids=lambda t: t.name)
def test_single_question(tags: TagSet) -> None:
    text = content(QUESTIONS[:1], tags)
    assert text.count(QUESTIONS[0]) == 1
    assert "1. " + QUESTIONS[0] not in text  # a single question is not numbered
    assert "semicolon" not in text  # no multi-answer instruction for one objective


@pytest.mark.parametrize("tags", TAG_SETS, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [2, 3, 4])
def test_multi_questions_numbered_in_order(tags: TagSet, n: int) -> None:
    text = content(QUESTIONS[:n], tags)
    positions = []
    for i, q in enumerate(QUESTIONS[:n], start=1):
        assert text.count(q) == 1
        positions.append(text.index(f"{i}. {q}"))
    assert positions == sorted(positions)
    assert "semicolon" in text
    assert re.search(r"answer ?1; ?answer ?2", text)  # the ';'-separated answer format is shown


@pytest.mark.parametrize("tags", TAG_SETS, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 3])
def test_prompt_uses_the_tag_set(tags: TagSet, n: int) -> None:
    text = content(QUESTIONS[:n], tags)
    for tag in (tags.state, tags.query, tags.info, tags.answer):
        assert tags.open(tag) in text
        assert tags.close(tag) in text
    other = SEARCH_R1 if tags is PAPER else PAPER
    for tag in (other.state, other.query, other.info):
        assert other.open(tag) not in text


def test_paper_prompt_explains_the_internal_state() -> None:
    text = content(QUESTIONS[:2])
    assert "internal state" in text
    assert "only memory" in text  # why: everything else is dropped
    assert "removed from your context" in text


def test_search_r1_prompt_keeps_search_r1_wording() -> None:
    text = content(QUESTIONS[:2], SEARCH_R1)
    assert "iterative reasoning, summarization, and web search" in text
    assert "<think> ... </think><search> ... </search>" in text
    assert "<answer> answer1; answer2; ... </answer>" in text
    assert "Answer the following questions: 1. " in text


@pytest.mark.parametrize("tags", TAG_SETS, ids=lambda t: t.name)
def test_max_turns_is_mentioned_only_when_given(tags: TagSet) -> None:
    assert "at most 7 turns" in content(QUESTIONS[:1], tags, max_turns=7)
    assert "at most" not in content(QUESTIONS[:1], tags)


def test_questions_are_stripped() -> None:
    text = content(["  padded question?  \n"])
    assert "Question: padded question?\n" in text


@pytest.mark.parametrize("questions", [[], [""], ["ok?", "   "], ["ok?", "\n"]])
def test_rejects_missing_or_empty_questions(questions: list[str]) -> None:
    with pytest.raises(ValueError):
        build_prompt_messages(questions)


def test_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        build_prompt_messages("What is the capital of France?")


@pytest.mark.parametrize("max_turns", [0, -3])
def test_rejects_bad_max_turns(max_turns: int) -> None:
    with pytest.raises(ValueError):
        build_prompt_messages(QUESTIONS[:1], max_turns=max_turns)
