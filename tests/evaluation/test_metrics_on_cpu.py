"""Metric definitions on hand-built episodes."""

from __future__ import annotations

import pytest

from verl_mem1.evaluation.metrics import dependency, episode_metrics, percentile, summarize, summarize_by_objectives
from verl_mem1.records import EpisodeRecord, TurnRecord


def _turn(index: int, context: int, generated: int, kind: str = "query") -> TurnRecord:
    return TurnRecord(
        index=index,
        context_ids=list(range(context)),
        generated_ids=list(range(generated)),
        logprobs=[-1.0] * generated,
        text="",
        internal_state=None,
        action={"kind": kind, "text": "", "reason": "bad" if kind == "invalid" else ""},
        observation_ids=[],
        finish_reason="stop",
        timings={},
    )


def _record(turns, answer, truth, wall=1.0) -> EpisodeRecord:
    return EpisodeRecord(
        id="e",
        data_source="hotpotqa",
        questions=["q"] * len(truth),
        ground_truth=truth,
        context_policy="mem1",
        tag_set="paper",
        sampling={},
        prompt_ids=[0] * 5,
        turns=turns,
        final_answer=answer,
        termination="answer" if answer is not None else "max_turns",
        wall_time_s=wall,
    )


def test_peak_tokens_and_dependency_by_brute_force():
    record = _record(
        [_turn(0, 10, 4), _turn(1, 30, 2, "invalid"), _turn(2, 12, 6, "answer")], "Paris; 1990", [["Paris"], ["1991"]]
    )
    assert record.peak_tokens == max(10 + 4, 30 + 2, 12 + 6) == 32
    brute = sum(len(t.context_ids) + j for t in record.turns for j in range(len(t.generated_ids)))
    assert dependency(record) == brute == (10 * 4 + 6) + (30 * 2 + 1) + (12 * 6 + 15)
    row = episode_metrics(record)
    assert row["em"] == 1.0 and row["num_objectives"] == 2 and row["answered"]
    assert row["invalid_actions"] == 1 and row["invalid_action_rate"] == pytest.approx(1 / 3)
    assert row["generated_tokens"] == 12 and row["turns"] == 3
    assert episode_metrics(record, reduce="mean")["em"] == 0.5


def test_no_answer_scores_zero():
    row = episode_metrics(_record([_turn(0, 8, 3, "invalid")], None, [["x"]]))
    assert row["em"] == 0.0 and row["f1"] == 0.0 and not row["answered"] and row["termination"] == "max_turns"


def test_summaries_and_percentiles():
    rows = [episode_metrics(_record([_turn(0, 10, 2, "answer")], "a", [["a"]], wall=w)) for w in (1.0, 2.0, 3.0, 4.0)]
    rows.append(episode_metrics(_record([_turn(0, 50, 2, "answer")], "a; b", [["a"], ["c"]], wall=9.0)))
    summary = summarize(rows)
    assert summary["episodes"] == 5 and summary["peak_tokens_max"] == 52
    assert summary["em"] == pytest.approx((4 * 1.0 + 1.0) / 5)
    assert summary["inference_time_s"]["p50"] == 3.0 and summary["inference_time_s"]["mean"] == pytest.approx(3.8)
    by = summarize_by_objectives(rows)
    assert list(by) == [1, 2] and by[1]["episodes"] == 4 and by[2]["peak_tokens"] == 52
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([7], 99) == 7
    with pytest.raises(ValueError):
        summarize([])


def test_environment_scored_episodes_report_reward_and_success_not_em():
    bought = _record([_turn(0, 10, 4), _turn(1, 12, 3)], None, [])
    bought.termination, bought.reward = "done", 1.0
    partial = _record([_turn(0, 10, 4), _turn(1, 12, 3, "invalid")], None, [])
    partial.termination, partial.reward = "done", 0.5
    never = _record([_turn(0, 10, 4)], None, [])
    never.reward = 0.0
    rows = [episode_metrics(r) for r in (bought, partial, never)]
    assert [r["em"] for r in rows] == [None, None, None] and [r["f1"] for r in rows] == [None] * 3
    assert [r["success"] for r in rows] == [True, False, False]
    assert [r["answered"] for r in rows] == [True, True, False]  # "answered" = the episode ended in a purchase
    s = summarize(rows)
    assert s["em"] is None and s["f1"] is None
    assert s["reward"] == pytest.approx(0.5) and s["success_rate"] == pytest.approx(1 / 3)
    assert s["answered_rate"] == pytest.approx(2 / 3) and s["invalid_action_rate"] == pytest.approx(1 / 5)
    qa = episode_metrics(_record([_turn(0, 5, 2)], "Paris", [["Paris"]]))
    assert qa["em"] == 1.0 and qa["success"] is None and qa["reward"] is None  # QA: reward set by the harness
