import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_mem1.protocol import (
    PAPER,
    SEARCH_R1,
    TagSet,
    format_documents,
    format_invalid_observation,
    format_observation,
    parse_turn,
    turns_left_hint,
)

TAG_SETS = [PAPER, SEARCH_R1]


@pytest.mark.parametrize("turns_left", [2, 3, 7, 16, 123])
def test_hint_states_the_number_of_turns(turns_left: int) -> None:
    hint = turns_left_hint(turns_left)
    assert re.findall(r"\d+", hint) == [str(turns_left)]
    assert "turns left" in hint
    assert "answer" not in hint.lower()  # only the last turn demands an answer


@pytest.mark.parametrize("tags", TAG_SETS, ids=lambda t: t.name)
def test_last_turn_hint_demands_an_answer(tags: TagSet) -> None:
    hint = turns_left_hint(1, tags)
    assert "1 turn left" in hint
    assert "last turn" in hint
    assert "must answer" in hint
    assert f"{tags.open(tags.answer)}…{tags.close(tags.answer)}" in hint
    assert hint != turns_left_hint(2, tags) and "2" not in hint


@pytest.mark.parametrize("turns_left", [0, -1, -100])
def test_hint_rejects_no_turns_left(turns_left: int) -> None:
    with pytest.raises(ValueError):
        turns_left_hint(turns_left)
    with pytest.raises(ValueError):
        format_observation("body", turns_left)


@pytest.mark.parametrize("tags", TAG_SETS, ids=lambda t: t.name)
@pytest.mark.parametrize("turns_left", [1, 2, 5])
def test_observation_layout(tags: TagSet, turns_left: int) -> None:
    body = "Doc 1(Title: X) some text\n"
    obs = format_observation(body, turns_left, tags)
    hint = turns_left_hint(turns_left, tags)
    assert obs == f"\n\n{tags.open(tags.info)}{hint}\n{body}{tags.close(tags.info)}\n\n"
    # The hint is the first thing inside the info block.
    assert obs.lstrip("\n").startswith(tags.open(tags.info) + "[HINT]")


@settings(max_examples=100, deadline=None)
@given(body=st.text(), turns_left=st.integers(1, 50), tags=st.sampled_from(TAG_SETS))
def test_observation_contains_body_verbatim(body: str, turns_left: int, tags: TagSet) -> None:
    obs = format_observation(body, turns_left, tags)
    prefix = f"\n\n{tags.open(tags.info)}{turns_left_hint(turns_left, tags)}\n"
    assert obs.startswith(prefix)
    assert obs[len(prefix) :] == body + f"{tags.close(tags.info)}\n\n"


@pytest.mark.parametrize("tags", TAG_SETS, ids=lambda t: t.name)
def test_invalid_observation(tags: TagSet) -> None:
    reason = parse_turn(f"{tags.open(tags.query)}half a query", tags).action.reason
    obs = format_invalid_observation(reason, 3, tags)
    assert obs.startswith(f"\n\n{tags.open(tags.info)}{turns_left_hint(3, tags)}\n")
    assert obs.endswith(f"{tags.close(tags.info)}\n\n")
    assert "invalid" in obs
    assert reason in obs
    s, q, a = tags.state, tags.query, tags.answer
    reminder = f"{tags.open(s)}…{tags.close(s)} then {tags.open(q)}…{tags.close(q)} or {tags.open(a)}…{tags.close(a)}"
    assert reminder in obs


def test_invalid_observation_on_last_turn_keeps_last_turn_hint() -> None:
    obs = format_invalid_observation("empty query", 1)
    assert "last turn" in obs and "empty query" in obs


def test_format_documents_search_r1_style() -> None:
    docs = ['"Paris"\nParis is the capital of France.', '"Eiffel Tower"\nA tower.\nSecond line.']
    assert format_documents(docs) == (
        'Doc 1(Title: "Paris") Paris is the capital of France.\nDoc 2(Title: "Eiffel Tower") A tower.\nSecond line.\n'
    )


def test_format_documents_without_title() -> None:
    assert format_documents(["no title line here", "\nempty first line"]) == (
        "Doc 1 no title line here\nDoc 2 empty first line\n"
    )


def test_format_documents_empty_and_type_checked() -> None:
    assert format_documents([]) == ""
    with pytest.raises(TypeError):
        format_documents("a single string")  # type: ignore[arg-type]


one_line = st.text(alphabet=st.characters(exclude_characters="\n"))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(one_line, st.text()), max_size=8))
def test_format_documents_exact_for_any_docs(docs: list[tuple[str, str]]) -> None:
    contents = [f"{title}\n{text}" for title, text in docs]
    expected = "".join(
        f"Doc {i}(Title: {title}) {text}\n" if title.strip() else f"Doc {i} {text}\n"
        for i, (title, text) in enumerate(docs, start=1)
    )
    assert format_documents(contents) == expected
    untitled = [title for title, _ in docs]
    assert format_documents(untitled) == "".join(f"Doc {i} {t}\n" for i, t in enumerate(untitled, start=1))
