"""QA rewards: SQuAD normalisation, EM/F1, multi-objective scoring by position, verl's compute_score."""

from __future__ import annotations

import numpy as np
import pytest

from verl_mem1.protocol import PAPER, SEARCH_R1, TagSet, format_invalid_observation, format_observation
from verl_mem1.tasks import (
    AnswerScore,
    compute_score,
    exact_match,
    extract_answer,
    f1_score,
    is_well_formed,
    normalize_answer,
    normalize_ground_truth,
    score_answer,
)


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The  Eiffel Tower!", "eiffel tower"),
        ("An apple a day", "apple day"),
        ("  U.S.A. ", "usa"),
        ("theatre", "theatre"),  # articles only as whole words
        ("Zürich", "zürich"),  # no accent folding
        ("“Curly” quotes", "“curly” quotes"),  # only ASCII punctuation is dropped, as in SQuAD
        ("", ""),
    ],
)
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_aliases_and_unicode():
    assert exact_match("nyc", ["New York City", "NYC"]) == 1.0
    assert exact_match("the New York City.", "New York City") == 1.0
    assert exact_match("Boston", ["New York City", "NYC"]) == 0.0
    assert exact_match("ZÜRICH", ["Zürich"]) == 1.0
    assert exact_match("Zurich", ["Zürich"]) == 0.0  # decided: no accent stripping (Search-R1/MEM1 comparable)
    assert exact_match("Wilhelm Conrad Röntgen", ["Wilhelm Conrad Röntgen"]) == 1.0


def test_empty_and_none_predictions_never_score():
    for empty in ("", "   ", None):
        assert exact_match(empty, ["x"]) == 0.0 and f1_score(empty, ["x"]) == 0.0
    # a gold answer made only of an article ("A", e.g. a blood type) still matches itself
    assert exact_match("A", ["A"]) == 1.0 and f1_score("a", ["A"]) == 1.0


def test_f1_partial_credit_and_alias_max():
    assert f1_score("Barack Obama", ["Barack Hussein Obama"]) == pytest.approx(0.8)
    assert f1_score("Obama", ["Barack Hussein Obama", "Obama"]) == 1.0
    assert f1_score("the president Obama", ["Barack Obama"]) == pytest.approx(0.5)
    assert f1_score("Paris", ["London"]) == 0.0


def test_yes_no_must_match_exactly():
    assert f1_score("yes", ["no"]) == 0.0
    assert f1_score("yes it is", ["yes"]) == 0.0  # no partial credit for a yes/no question
    assert f1_score("no answer", ["noanswer"]) == 0.0
    assert f1_score("Yes.", ["yes"]) == 1.0 and exact_match("No", ["no"]) == 1.0


def test_score_answer_by_position_sum_and_mean():
    truth = [["Paris"], ["Berlin", "Berlin, Germany"], ["Rome"]]
    score = score_answer("paris; Berlin Germany; Madrid", truth)
    assert score == AnswerScore(2.0, 2.0, [1.0, 1.0, 0.0], [1.0, 1.0, 0.0], 3, 3)
    mean = score_answer("paris; Berlin Germany; Madrid", truth, reduce="mean")
    assert mean.em == pytest.approx(2 / 3) and mean.f1 == pytest.approx(2 / 3)
    assert score_answer("Berlin; Paris; Rome", truth).em_per_objective == [0.0, 0.0, 1.0]  # positions matter
    with pytest.raises(ValueError, match="reduce must be"):
        score_answer("x", truth, reduce="max")


def test_missing_extra_and_empty_parts():
    truth = [["a1"], ["b1"], ["c1"]]
    assert score_answer("a1", truth) == AnswerScore(1.0, 1.0, [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], 3, 1)
    assert score_answer("a1; b1; c1; d1; e1", truth).em == 3.0  # extra answers ignored
    assert score_answer("a1; b1; c1; d1; e1", truth).num_answers == 5
    assert score_answer("a1;; c1", truth).em_per_objective == [1.0, 0.0, 1.0]  # an empty part keeps its slot
    assert score_answer(None, truth) == AnswerScore(0.0, 0.0, [0.0] * 3, [0.0] * 3, 3, 0)


def test_single_objective():
    assert score_answer("Tulsa", [["Tulsa"]]) == AnswerScore(1.0, 1.0, [1.0], [1.0], 1, 1)
    # one objective: the whole string is the answer, ";" and all (Search-R1's single-objective scoring)
    assert score_answer("Tom; Jerry", [["Tom; Jerry"]]).em == 1.0
    assert score_answer("Paris; London", [["Paris"]]).em == 0.0
    assert score_answer("Paris; London", [["Paris"]]).f1 == pytest.approx(2 / 3)


def test_single_objective_response_is_scored_regression():
    """The MEM1 reference scorer needs two <answer> tags and so scores every single-objective response 0."""
    response = "<IS>The band is Tinted Windows; they first played in Tulsa.</IS><answer>Tulsa</answer>"
    assert compute_score("hotpotqa", response, [["Tulsa"]])["score"] == 1.0
    assert compute_score("nq", response, {"target": np.array(["tulsa", "Tulsa, OK"], dtype=object)})["score"] == 1.0


def test_normalize_ground_truth_shapes():
    nested = np.array([np.array(["a", "A1"], dtype=object), np.array(["b"], dtype=object)], dtype=object)
    assert normalize_ground_truth(nested) == [["a", "A1"], ["b"]]
    assert normalize_ground_truth({"target": np.array(["x", "y"], dtype=object)}) == [["x", "y"]]
    assert normalize_ground_truth(["x", "y"]) == [["x", "y"]]  # Search-R1: one objective, two aliases
    assert normalize_ground_truth(["x", "y"], num_objectives=2) == [["x"], ["y"]]
    assert normalize_ground_truth("x") == [["x"]] and normalize_ground_truth([["x"], "y"]) == [["x"], ["y"]]
    for bad in ([], None, [["x"], [1]], {"target": []}):
        with pytest.raises(ValueError, match="ground truth"):
            normalize_ground_truth(bad)


def _turn(tags: TagSet, state: str, kind: str, text: str) -> str:
    tag = tags.query if kind == "query" else tags.answer
    return f"{tags.open(tags.state)}{state}{tags.close(tags.state)}\n{tags.open(tag)}{text}{tags.close(tag)}"


def _episode(tags: TagSet, answer: str, *, turns: int = 3) -> str:
    """A full multi-turn response as the rollout writes it, observations (with the turns-left hint) included."""
    parts = []
    for t in range(turns - 1):
        parts.append(_turn(tags, f"state {t}", "query", f"search {t}"))
        parts.append(format_observation(f'Doc 1(Title: "T{t}") text {t}', turns - 1 - t, tags))
    parts.append(_turn(tags, "all found", "answer", answer))
    return "".join(parts)


@pytest.mark.parametrize("tags", [PAPER, SEARCH_R1])
def test_compute_score_on_full_multi_turn_responses(tags):
    truth = np.array([np.array(["Tulsa"], dtype=object), np.array(["1952", "in 1952"], dtype=object)], dtype=object)
    info = {"index": 0, "objectives": 2, "questions": np.array(["q1", "q2"], dtype=object), "tags": tags.name}
    response = _episode(tags, "tulsa; 1953")
    assert extract_answer(response) == "tulsa; 1953" and is_well_formed(response, tags) and is_well_formed(response)
    result = compute_score("hotpotqa", response, truth, info)
    assert result == {
        "score": 1.0,
        "em": 1.0,
        "f1": 1.0,
        "num_objectives": 2.0,
        "num_answers": 2.0,
        "answered": 1.0,
        "well_formed": 1.0,
    }
    assert compute_score("hotpotqa", _episode(tags, "Tulsa; In 1952."), truth, info)["score"] == 2.0
    assert compute_score("hotpotqa", response, truth, info, reduce="mean")["score"] == 0.5
    assert compute_score("hotpotqa", response, truth, info, metric="f1")["score"] == 1.0


def test_answer_in_observations_is_not_the_models():
    """The last-turn hint and the invalid-action observation contain "<answer>…</answer>" themselves."""
    response = _turn(PAPER, "s", "query", "q") + format_observation("docs", 1, PAPER) + "<IS>out of ideas</IS>"
    assert "<answer>" in response and extract_answer(response) is None
    result = compute_score("nq", response, [["…"]])
    assert result["score"] == 0.0 and result["answered"] == 0.0 and result["num_answers"] == 0.0
    response = "garbage" + format_invalid_observation("no action", 1, SEARCH_R1) + _turn(SEARCH_R1, "s", "answer", "x")
    assert extract_answer(response) == "x"


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("<answer>a</answer> then <answer>b</answer>", "b"),
        ("<answer>a</answer> then <answer>b", "a"),  # the last *complete* one
        ("<answer>a</answer> junk </answer>", "a"),
        ("<answer> x <answer> y </answer>", "y"),
        ("<answer>\n  multi\nline </answer>", "multi\nline"),
        ("no tags", None),
        ("<answer></answer>", ""),
    ],
)
def test_extract_answer(response, answer):
    assert extract_answer(response) == answer


@pytest.mark.parametrize(
    "response",
    [
        "<answer>x</answer>",  # no internal state
        "<IS>s</IS><query>a</query><answer>x</answer>",  # two actions in one turn
        "<IS>s</IS><IS>t</IS><answer>x</answer>",  # two state blocks
        "<answer>x</answer><IS>s</IS>",  # state after the action
        "<IS>s</IS><query>q</query>",  # never answers
        "<IS>s</IS><answer>x</answer>" + format_observation("d", 1) + "<IS>s</IS><answer>x</answer>",  # answers twice
        "<IS></IS><answer>x</answer>",  # empty state
        "<IS>s</IS><answer> </answer>",  # empty answer
        "",
    ],
)
def test_malformed_responses(response):
    assert not is_well_formed(response, PAPER)


def test_format_bonus_off_by_default():
    good, truth = _episode(PAPER, "wrong"), [["right"]]
    assert compute_score("x", good, truth)["score"] == 0.0
    assert compute_score("x", good, truth, format_bonus=0.1)["score"] == pytest.approx(0.1)
    assert compute_score("x", good.replace("<IS>all found</IS>", ""), truth, format_bonus=0.1)["score"] == 0.0
    right = compute_score("x", _episode(PAPER, "Right"), truth, format_bonus=0.1)
    assert right["score"] == pytest.approx(1.1) and right["well_formed"] == 1.0
    # the tag set from extra_info decides: paper tags are malformed for a search_r1 task
    assert compute_score("x", good, truth, {"tags": "search_r1"}, format_bonus=0.1)["score"] == 0.0


def test_compute_score_options_and_verl_kwargs():
    response = _episode(PAPER, "Barack Obama")
    assert compute_score("x", response, [["Barack Hussein Obama"]], metric="f1")["score"] == pytest.approx(0.8)
    # verl passes extra keyword arguments (e.g. reward_router_address); they are ignored
    assert compute_score("x", response, [["Obama"]], None, reward_router_address=None)["score"] == 0.0
    with pytest.raises(ValueError, match="metric must be"):
        compute_score("x", response, [["a"]], metric="acc")
    # a flat target with extra_info saying two objectives is two single-alias objectives
    assert compute_score("x", _episode(PAPER, "a; b"), ["a", "b"], {"objectives": 2})["em"] == 2.0
    assert compute_score("x", _episode(PAPER, "a; b"), ["a", "b"], {"questions": ["q1", "q2"]})["em"] == 2.0


def test_compute_score_scores_the_recorded_answer_over_the_text():
    """The agent loop passes the episode's recorded answer; the text's last <answer> is only a fallback."""
    from verl_mem1.tasks.rewards import RECORDED_ANSWER_KEY, compute_score

    text = "<IS>x</IS><answer>Paris</answer>"
    assert compute_score("hotpotqa", text, ["Paris"])["em"] == 1.0
    assert compute_score("hotpotqa", text, ["Paris"], {RECORDED_ANSWER_KEY: "Lyon"})["em"] == 0.0
    unanswered = compute_score("hotpotqa", text, ["Paris"], {RECORDED_ANSWER_KEY: None})
    assert unanswered["em"] == 0.0 and unanswered["answered"] == 0.0


def test_answer_reward_is_score_answer_under_the_named_metric_and_reduction():
    from verl_mem1.tasks.rewards import answer_reward

    truth = [["Paris"], ["Oklahoma", "OK"]]
    for answer in ("Paris; Oklahoma", "Paris; Tulsa Oklahoma", "Lyon", None):
        for reduce in ("sum", "mean"):
            score = score_answer(answer, truth, reduce=reduce)
            assert answer_reward("em", reduce)(answer, truth) == score.em
            assert answer_reward("f1", reduce)(answer, truth) == score.f1
    assert answer_reward("em", "sum")("Paris; OK", truth) == 2.0 and answer_reward("em", "mean")("Paris", truth) == 0.5
    with pytest.raises(ValueError, match="metric must be 'em' or 'f1'"):
        answer_reward("acc")
    with pytest.raises(ValueError, match="reduce must be 'sum' or 'mean'"):
        answer_reward("em", "max")


def test_the_penalty_is_per_invalid_turn():
    from verl_mem1.records import EpisodeRecord, TurnRecord
    from verl_mem1.tasks.rewards import penalised

    def turn(kind):
        return TurnRecord(0, [1], [2], [-0.1], "", None, {"kind": kind, "text": "", "reason": ""}, [], "stop", {})

    record = EpisodeRecord("t", "x", ["q"], [["a"]], "mem1", "paper", {}, [1], turns=[turn("invalid"), turn("query"),
                           turn("invalid")])  # fmt: skip
    assert penalised(1.0, record, 0.25) == 0.5 and penalised(1.0, record, 0.0) == 1.0
