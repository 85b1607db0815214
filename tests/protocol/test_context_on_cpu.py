import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_mem1.protocol import (
    ContextPolicy,
    FullContext,
    Mem1Context,
    TurnTokens,
    WindowContext,
    parse_context_policy,
)

PROPS = settings(max_examples=100, deadline=None)

ids = st.lists(st.integers(0, 151_645), max_size=12)
turn = st.builds(TurnTokens, generated_ids=ids, observation_ids=ids)
turns = st.lists(turn, max_size=8)


def concat(prompt: list[int], kept: list[TurnTokens]) -> list[int]:
    out = list(prompt)
    for t in kept:
        out += list(t.generated_ids) + list(t.observation_ids)
    return out


def test_small_example() -> None:
    prompt = [1, 2]
    history = [TurnTokens([10, 11], [12]), TurnTokens([20], [21, 22]), TurnTokens([30, 31], [])]
    assert Mem1Context().build(prompt, history) == [1, 2, 30, 31]
    assert FullContext().build(prompt, history) == [1, 2, 10, 11, 12, 20, 21, 22, 30, 31]
    assert WindowContext(2).build(prompt, history) == [1, 2, 20, 21, 22, 30, 31]
    assert WindowContext(5).build(prompt, history) == FullContext().build(prompt, history)


@pytest.mark.parametrize("policy", [Mem1Context(), FullContext(), WindowContext(1), WindowContext(3)], ids=str)
def test_no_turns_is_just_the_prompt(policy: ContextPolicy) -> None:
    prompt = (7, 8, 9)  # any sequence, not only lists
    out = policy.build(prompt, [])
    assert out == [7, 8, 9] and isinstance(out, list)


@PROPS
@given(prompt=ids, history=turns)
def test_mem1_keeps_prompt_and_last_turn(prompt: list[int], history: list[TurnTokens]) -> None:
    out = Mem1Context().build(prompt, history)
    if history:
        last = history[-1]
        assert out == prompt + list(last.generated_ids) + list(last.observation_ids)
    else:
        assert out == prompt
    assert out == WindowContext(1).build(prompt, history)


@PROPS
@given(prompt=ids, history=turns)
def test_full_is_the_concatenation(prompt: list[int], history: list[TurnTokens]) -> None:
    out = FullContext().build(prompt, history)
    assert out == concat(prompt, history)
    assert len(out) == len(prompt) + sum(len(t.generated_ids) + len(t.observation_ids) for t in history)


@PROPS
@given(prompt=ids, history=turns, k=st.integers(1, 10))
def test_window_keeps_last_k_turns(prompt: list[int], history: list[TurnTokens], k: int) -> None:
    out = WindowContext(k).build(prompt, history)
    kept = history[-k:]
    assert out == concat(prompt, kept)
    assert len(out) == len(prompt) + sum(len(t.generated_ids) + len(t.observation_ids) for t in kept)
    # A wider window never loses tokens, and a window at least as long as the history is the full context.
    assert len(WindowContext(k + 1).build(prompt, history)) >= len(out)
    if k >= len(history):
        assert out == FullContext().build(prompt, history)


@PROPS
@given(prompt=ids, history=turns)
def test_policies_do_not_mutate_inputs(prompt: list[int], history: list[TurnTokens]) -> None:
    snapshot = (list(prompt), [(list(t.generated_ids), list(t.observation_ids)) for t in history])
    for policy in (Mem1Context(), FullContext(), WindowContext(2)):
        out = policy.build(prompt, history)
        out.append(-1)  # the result is a fresh list
    assert (prompt, [(list(t.generated_ids), list(t.observation_ids)) for t in history]) == snapshot


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("mem1", Mem1Context()),
        ("full", FullContext()),
        ("window:1", WindowContext(1)),
        ("window:12", WindowContext(12)),
        (" window:3 ", WindowContext(3)),
    ],
)
def test_parse_context_policy(spec: str, expected: ContextPolicy) -> None:
    policy = parse_context_policy(spec)
    assert policy == expected
    assert type(policy) is type(expected)
    assert parse_context_policy(policy.name) == policy  # names round-trip


def test_names() -> None:
    assert Mem1Context().name == "mem1"
    assert FullContext().name == "full"
    assert WindowContext(4).name == "window:4"
    assert str(WindowContext(4)) == "window:4"
    assert Mem1Context() != WindowContext(1)  # same behaviour, different policy name


BAD_SPECS = ["", "MEM1x", "window", "window:", "window:0", "window:-2", "window:+2", "window:two", "window:1.5", "last"]


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_parse_context_policy_rejects(spec: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_context_policy(spec)
    message = str(err.value)
    assert repr(spec) in message
    for form in ("mem1", "full", "window:K"):
        assert form in message


@pytest.mark.parametrize("k", [0, -1, True, 1.0])
def test_window_size_must_be_positive_int(k: object) -> None:
    with pytest.raises(ValueError):
        WindowContext(k)  # type: ignore[arg-type]


def test_context_policy_is_abstract() -> None:
    with pytest.raises(TypeError):
        ContextPolicy()  # type: ignore[abstract]
