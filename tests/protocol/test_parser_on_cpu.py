import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_mem1.protocol import PAPER, SEARCH_R1, Action, ParsedTurn, TagSet, parse_turn, split_answers

TAG_SETS = [PAPER, SEARCH_R1]
PROPS = settings(max_examples=150, deadline=None)


def render(template: str, tags: TagSet) -> str:
    """Write a turn with placeholder tags S (state), Q (query), A (answer) in a given tag set."""
    for placeholder, tag in (("S", tags.state), ("Q", tags.query), ("A", tags.answer)):
        template = template.replace(f"</{placeholder}>", tags.close(tag)).replace(f"<{placeholder}>", tags.open(tag))
    return template


# (template, kind, text, internal_state)
VALID_CASES = [
    ("<S>s</S><Q>q</Q>", "query", "q", "s"),
    ("<S>s</S><A>a</A>", "answer", "a", "s"),
    ("<S>  two\nlines \n</S>\n\n<Q>\t who is x  \n</Q>", "query", "who is x", "two\nlines"),
    ("<Q>q</Q>", "query", "q", None),  # state is optional unless required
    ("<A>Paris</A>", "answer", "Paris", None),
    ("<S></S><Q>q</Q>", "query", "q", ""),  # present but empty state is still a state
    ("<S>s</S><Q>first</Q><Q>second</Q>", "query", "first", "s"),
    ("<S>s</S><A>a</A><Q>q</Q>", "answer", "a", "s"),
    ("<S>s</S><Q>q</Q> trailing text <A>x</A></S>", "query", "q", "s"),
    ("<S>a</S><S>b</S><Q>q</Q>", "query", "q", "a"),
    ("<S>unclosed state <Q>q</Q>", "query", "q", None),
    ("<Q>q</Q><S>after the action</S>", "query", "q", None),
    ("preamble <S>s</S> between <Q>q</Q>", "query", "q", "s"),
    ("<A>draft <Q>q</Q>", "query", "q", None),  # an unclosed answer before a complete query is just text
    ("<S>東京 état ☕</S><Q>Café — naïve 北京</Q>", "query", "Café — naïve 北京", "東京 état ☕"),
    ("<S>s</S><A>Paris; 1912; </A>", "answer", "Paris; 1912;", "s"),
    ("<S>s</S><A>a</A></Q>", "answer", "a", "s"),
    ("<S>x < y > z</S><Q>a<b</Q>", "query", "a<b", "x < y > z"),
]

# (template, reason with placeholder tags, internal_state)
INVALID_CASES = [
    ("", "no action: expected <Q>…</Q> or <A>…</A>", None),
    ("just some text", "no action: expected <Q>…</Q> or <A>…</A>", None),
    ("<S>s</S>", "no action: expected <Q>…</Q> or <A>…</A>", "s"),
    ("<S>s</S><QUERY>q</QUERY>", "no action: expected <Q>…</Q> or <A>…</A>", "s"),  # tags are case-sensitive
    ("<S>s</S><Q>q", "unclosed <Q> tag", "s"),
    ("<S>s</S><A>a", "unclosed <A> tag", "s"),
    ("<Q>q</A>", "unclosed <Q> tag", None),
    ("<A>a</Q>", "unclosed <A> tag", None),
    ("<S>s</S></Q><Q>q</Q>", "</Q> without a matching <Q>", "s"),
    ("<S>s</S><Q>  \n\t </Q>", "empty <Q>", "s"),
    ("<A></A>", "empty <A>", None),
    ("<Q>a<Q>b</Q>", "nested tags inside <Q>", None),
    ("<S>s</S><Q>a<A>b</Q>", "nested tags inside <Q>", "s"),
    ("<A>x<S>s</S></A>", "nested tags inside <A>", None),
    ("<Q>x</S></Q>", "nested tags inside <Q>", None),
    ("<A>x<S></A>", "nested tags inside <A>", None),
]


def expected_reason(template: str, tags: TagSet) -> str:
    # "empty <Q>" in the table stands for "empty query" / "empty search": the tag's name, not the tag.
    template = re.sub(r"empty <(\w)>", lambda m: "empty " + {"Q": tags.query, "A": tags.answer}[m.group(1)], template)
    return render(template, tags)


@pytest.mark.parametrize("tags", TAG_SETS, ids=lambda t: t.name)
@pytest.mark.parametrize(("template", "kind", "text", "state"), VALID_CASES)
def test_valid_turns(tags: TagSet, template: str, kind: str, text: str, state: str | None) -> None:
    turn = parse_turn(render(template, tags), tags)
    assert turn == ParsedTurn(state, Action(kind, text))  # type: ignore[arg-type]


@pytest.mark.parametrize("tags", TAG_SETS, ids=lambda t: t.name)
@pytest.mark.parametrize(("template", "reason", "state"), INVALID_CASES)
def test_invalid_turns(tags: TagSet, template: str, reason: str, state: str | None) -> None:
    turn = parse_turn(render(template, tags), tags)
    assert turn.action == Action("invalid", "", expected_reason(reason, tags))
    assert turn.internal_state == state


def test_reasons_use_the_real_tags() -> None:
    assert parse_turn("").action.reason == "no action: expected <query>…</query> or <answer>…</answer>"
    assert parse_turn("<query>x").action.reason == "unclosed <query> tag"
    assert parse_turn("<query> </query>").action.reason == "empty query"
    assert parse_turn("<answer>\n</answer>").action.reason == "empty answer"
    assert parse_turn("<query>a<IS>b</query>").action.reason == "nested tags inside <query>"
    assert parse_turn("<search>x", SEARCH_R1).action.reason == "unclosed <search> tag"
    r1_no_action = "no action: expected <search>…</search> or <answer>…</answer>"
    assert parse_turn("<query>q</query>", SEARCH_R1).action.reason == r1_no_action


@pytest.mark.parametrize("tags", TAG_SETS, ids=lambda t: t.name)
def test_require_state(tags: TagSet) -> None:
    missing = render("missing internal state: expected <S>…</S> before the action", tags)
    for template in ("<Q>q</Q>", "<S>unclosed <Q>q</Q>", "<Q>q</Q><S>late</S>"):
        turn = parse_turn(render(template, tags), tags, require_state=True)
        assert turn.action == Action("invalid", "", missing), template
        assert turn.internal_state is None
    ok = parse_turn(render("<S>s</S><A>a</A>", tags), tags, require_state=True)
    assert ok == ParsedTurn("s", Action("answer", "a"))
    # A malformed action keeps its own, more specific reason.
    assert parse_turn(render("<Q>q", tags), tags, require_state=True).action.reason == render("unclosed <Q> tag", tags)


def test_other_tag_set_is_not_recognised() -> None:
    assert parse_turn("<think>s</think><search>q</search>").action.kind == "invalid"
    assert parse_turn("<IS>s</IS><query>q</query>", SEARCH_R1).internal_state is None


def test_non_str_input_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse_turn(b"<query>q</query>")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("answer", "parts"),
    [
        ("Paris", ["Paris"]),
        ("Paris; 1912 ;Einstein", ["Paris", "1912", "Einstein"]),
        ("a;;c", ["a", "", "c"]),
        ("a; ", ["a", ""]),
        ("", [""]),
        (" ; ", ["", ""]),
    ],
)
def test_split_answers(answer: str, parts: list[str]) -> None:
    assert split_answers(answer) == parts


# --- properties -------------------------------------------------------------------------------------------------


def fragments(tags: TagSet) -> st.SearchStrategy[str]:
    own = [tags.open(t) for t in (tags.state, tags.query, tags.answer, tags.info)]
    own += [tags.close(t) for t in (tags.state, tags.query, tags.answer, tags.info)]
    noise = ["<IS>", "</query>", "<think>", "</search>", "<", ">", "</", "/>", "query", "answer", ";"]
    words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
    parts = st.one_of(st.sampled_from(own), st.sampled_from(own + noise), st.sampled_from([" ", "\n", "\t", ""]), words)
    return st.lists(parts, max_size=40).map("".join)


def check_well_formed(turn: ParsedTurn) -> None:
    assert turn.action.kind in ("query", "answer", "invalid")
    assert bool(turn.action.reason) == (turn.action.kind == "invalid")
    if turn.action.kind == "invalid":
        assert turn.action.text == ""
    else:
        assert turn.action.text and turn.action.text == turn.action.text.strip()
    assert turn.internal_state is None or turn.internal_state == turn.internal_state.strip()


def reference_action(text: str, tags: TagSet) -> tuple[str, str] | None:
    """The MEM1/Search-R1 regex applied to what generation with stop strings would have produced."""
    ends = [text.find(s) + len(s) for s in tags.stop_strings if s in text]
    prefix = text[: min(ends)] if ends else text
    q, a, s = (re.escape(t) for t in (tags.query, tags.answer, tags.state))
    match = re.search(rf"<({q}|{a})>(.*?)</\1>", prefix, re.DOTALL)
    if match is None:
        return None
    content = match.group(2)
    if re.search(rf"</?({s})>|<({q}|{a})>", content) or not content.strip():
        return None
    return ("query" if match.group(1) == tags.query else "answer", content.strip())


@PROPS
@given(st.text())
def test_never_raises_on_arbitrary_text(text: str) -> None:
    for tags in TAG_SETS:
        check_well_formed(parse_turn(text, tags))
        check_well_formed(parse_turn(text, tags, require_state=True))


@PROPS
@given(st.data())
def test_tag_soup_matches_reference(data: st.DataObject) -> None:
    tags = data.draw(st.sampled_from(TAG_SETS))
    text = data.draw(fragments(tags))
    turn = parse_turn(text, tags)
    check_well_formed(turn)
    expected = reference_action(text, tags)
    if expected is None:
        assert turn.action.kind == "invalid"
    else:
        assert (turn.action.kind, turn.action.text) == expected
    strict = parse_turn(text, tags, require_state=True)
    check_well_formed(strict)
    assert strict.internal_state == turn.internal_state
    if turn.internal_state is None and turn.action.kind != "invalid":
        assert strict.action.kind == "invalid" and strict.action.reason.startswith("missing internal state")
    else:
        assert strict.action == turn.action


no_angle = st.text(alphabet=st.characters(exclude_characters="<>", exclude_categories=("Cs",))).filter(str.strip)


@PROPS
@given(state=no_angle, query=no_angle, tags=st.sampled_from(TAG_SETS))
def test_round_trip(state: str, query: str, tags: TagSet) -> None:
    text = render(f"<S>{state}</S><Q>{query}</Q>", tags)
    assert parse_turn(text, tags, require_state=True) == ParsedTurn(state.strip(), Action("query", query.strip()))


@PROPS
@given(st.data())
def test_trailing_text_never_changes_the_action(data: st.DataObject) -> None:
    tags = data.draw(st.sampled_from(TAG_SETS))
    head = data.draw(fragments(tags))
    stop = data.draw(st.sampled_from(tags.stop_strings))
    tail = data.draw(st.one_of(fragments(tags), st.text()))
    turn = parse_turn(head + stop, tags)
    assert parse_turn(head + stop + tail, tags) == turn
    # Parsing the full text equals parsing what a backend honouring the stop strings would have returned.
    ends = [(head + stop).find(s) + len(s) for s in tags.stop_strings if s in head + stop]
    assert parse_turn((head + stop)[: min(ends)], tags) == turn


# --- performance: linear time on adversarial input -------------------------------------------------------------

MB = 1_000_000


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("<query>" * (MB // 7), id="open-query-x1MB"),
        pytest.param("<answer><query>" * (MB // 15), id="open-both-x1MB"),
        pytest.param("<IS>" * (MB // 4) + "<query>q</query>", id="open-state-x1MB"),
        pytest.param("<IS>x" * (MB // 5) + "</IS><query>q</query>", id="open-state-then-close"),
        pytest.param("</query>" * (MB // 8), id="close-x1MB"),
        pytest.param("<query>" + "a" * MB + "</query>", id="long-query"),
        pytest.param("<query>" + "<IS>" * (MB // 4) + "</query>", id="nested-x1MB"),
        pytest.param(("<IS>é</IS><query>" + "北" * 30 + "\n") * (MB // 50), id="mixed-non-ascii"),
    ],
)
def test_linear_time_on_adversarial_input(text: str) -> None:
    start = time.perf_counter()
    turn = parse_turn(text, PAPER, require_state=True)
    elapsed = time.perf_counter() - start
    check_well_formed(turn)
    assert elapsed < 0.5, f"{elapsed:.3f}s"


def test_thousands_of_tags() -> None:
    text = "".join(f"<IS>state {i}</IS><query>q{i}</query>" for i in range(5000))
    start = time.perf_counter()
    for _ in range(100):
        turn = parse_turn(text)
    assert time.perf_counter() - start < 1.0
    assert turn == ParsedTurn("state 0", Action("query", "q0"))
