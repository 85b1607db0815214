import dataclasses

import pytest

from verl_mem1.protocol import PAPER, SEARCH_R1, TagSet, get_tag_set


def test_paper_tags() -> None:
    assert (PAPER.state, PAPER.query, PAPER.info, PAPER.answer) == ("IS", "query", "info", "answer")
    assert PAPER.open(PAPER.state) == "<IS>"
    assert PAPER.close(PAPER.state) == "</IS>"
    assert PAPER.stop_strings == ("</query>", "</answer>")


def test_search_r1_tags_match_released_checkpoints() -> None:
    assert (SEARCH_R1.state, SEARCH_R1.query, SEARCH_R1.info, SEARCH_R1.answer) == (
        "think",
        "search",
        "information",
        "answer",
    )
    assert SEARCH_R1.open(SEARCH_R1.info) == "<information>"
    assert SEARCH_R1.stop_strings == ("</search>", "</answer>")


@pytest.mark.parametrize(
    ("name", "expected"),
    [("paper", PAPER), ("mem1", PAPER), ("search_r1", SEARCH_R1), ("search-r1", SEARCH_R1), (" Paper ", PAPER)],
)
def test_get_tag_set_names_and_aliases(name: str, expected: TagSet) -> None:
    assert get_tag_set(name) is expected


@pytest.mark.parametrize("name", ["", "think", "searchr1", "PAPERS"])
def test_get_tag_set_unknown_lists_choices(name: str) -> None:
    with pytest.raises(ValueError) as err:
        get_tag_set(name)
    message = str(err.value)
    for choice in ("paper", "mem1", "search_r1", "search-r1"):
        assert choice in message


def test_tag_set_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PAPER.state = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "fields",
    [
        ("", "q", "i", "a"),
        ("<s>", "q", "i", "a"),
        ("s", "q/", "i", "a"),
        ("s", "q", "i", "q"),  # query and answer must differ or actions are ambiguous
        ("s", "s", "i", "a"),
        ("s ", "q", "i", "a"),
    ],
)
def test_tag_set_rejects_bad_tags(fields: tuple[str, str, str, str]) -> None:
    with pytest.raises(ValueError):
        TagSet("bad", *fields)
