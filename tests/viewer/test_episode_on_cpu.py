"""What the viewer shows of an episode, checked against the records and the context rule, turn by turn."""

from __future__ import annotations

import pytest

from verl_mem1.protocol.context import parse_context_policy
from verl_mem1.protocol.tags import PAPER, WEBSHOP
from verl_mem1.viewer.episode import episode_view, generated_spans, kept_turns, observation_spans
from verl_mem1.viewer.load import load_episodes


def test_generated_spans_mark_state_query_answer_and_an_unclosed_block():
    text = "<IS>Q1 known</IS> then <query>who</query><answer>Paris"
    assert generated_spans(text, PAPER) == [
        ["state", "<IS>Q1 known</IS>"],
        ["text", " then "],
        ["query", "<query>who</query>"],
        ["answer", "<answer>Paris"],  # cut by the token budget: still marked, to the end
    ]
    assert "".join(t for _, t in generated_spans(text, PAPER)) == text
    assert generated_spans("<IS>s</IS><action>click[Buy Now]</action>", WEBSHOP)[1] == [
        "query",
        "<action>click[Buy Now]</action>",
    ]
    assert generated_spans("no tags", PAPER) == [["text", "no tags"]]


def test_observation_spans_split_the_hint_from_the_environment_text():
    text = "\n\n<info>[HINT]You have 2 turns left.[/HINT]\nDoc 1 ...</info>\n\n"
    spans = observation_spans(text)
    assert [k for k, _ in spans] == ["observation", "hint", "observation"]
    assert spans[1][1] == "[HINT]You have 2 turns left.[/HINT]" and "".join(t for _, t in spans) == text


@pytest.mark.parametrize(
    ("spec", "turn", "expected"),
    [("mem1", 0, []), ("mem1", 3, [2]), ("full", 3, [0, 1, 2]), ("window:2", 4, [2, 3]), ("window:2", 1, [0])],
)
def test_kept_turns_come_from_the_policy_itself(spec, turn, expected):
    assert kept_turns(parse_context_policy(spec), turn) == expected


def _sizes(record):
    return [len(t.generated_ids) + len(t.observation_ids) for t in record.turns]


def test_mem1_view_drops_the_turn_before_last_and_keeps_the_last_state(eval_runs, tiny_backend):
    loaded = next(e for e in load_episodes([eval_runs["mem1"]]) if e.record.id == "stardust")
    record, view = loaded.record, episode_view(loaded, tiny_backend.tokenizer, key=0)
    sizes = _sizes(record)
    assert [t["kept"] for t in view["turns"]] == [[], [0], [1], [2]]
    assert [t["dropped"] for t in view["turns"]] == [[], [], [0], [1]]
    assert [t["dropped_tokens"] for t in view["turns"]] == [0, 0, sizes[0], sizes[1]]
    assert view["turns"][3]["dropped_total_tokens"] == sizes[0] + sizes[1], "turns 1 and 2 are gone by turn 4"
    assert all(t["context_matches"] for t in view["turns"]), "the rule rebuilt every recorded context"
    assert [t["context_tokens"] for t in view["turns"]] == [len(t.context_ids) for t in record.turns]
    states = [[text for kind, text in t["generated"] if kind == "state"] for t in view["turns"]]
    assert states[0] == ["<IS>Q1 unknown. Q2 unknown.</IS>"] and states[2] == []
    invalid = view["turns"][2]["action"]
    assert invalid["kind"] == "invalid" and invalid["reason"], "the reason a turn was invalid is shown"
    assert [k for k, _ in view["turns"][2]["observation"]].count("hint") == 1
    assert view["final_answer"] == "Neil Gaiman; Oklahoma" and view["em"] == 2.0 and view["termination"] == "answer"
    assert view["prompt"] == tiny_backend.tokenizer.decode(record.prompt_ids, skip_special_tokens=False)


def test_full_view_drops_nothing(eval_runs, tiny_backend):
    loaded = next(e for e in load_episodes([eval_runs["full"]]) if e.record.id == "stardust")
    view = episode_view(loaded, tiny_backend.tokenizer, key=0)
    assert [t["kept"] for t in view["turns"]] == [[], [0], [0, 1], [0, 1, 2]]
    assert all(t["dropped_tokens"] == 0 and t["dropped_total_tokens"] == 0 for t in view["turns"])
    assert all(t["context_matches"] for t in view["turns"])


def test_a_context_the_rule_does_not_build_is_flagged_and_shown_as_recorded(eval_runs, tiny_backend):
    loaded = next(e for e in load_episodes([eval_runs["full"]]) if e.record.id == "stardust")
    loaded.record.context_policy = "mem1"  # a full-context record relabelled: turn 3 saw more than mem1 keeps
    view = episode_view(loaded, tiny_backend.tokenizer, key=0)
    assert [t["context_matches"] for t in view["turns"]] == [True, True, False, False]
    recorded = loaded.record.turns[2].context_ids
    assert view["turns"][2]["context_text"] == tiny_backend.tokenizer.decode(recorded, skip_special_tokens=False)


def test_a_record_of_an_unknown_policy_is_shown_as_recorded(eval_runs, tiny_backend):
    loaded = next(e for e in load_episodes([eval_runs["mem1"]]) if e.record.id == "stardust")
    loaded.record.context_policy = "summary:3"  # a policy this version does not know
    view = episode_view(loaded, tiny_backend.tokenizer, key=0)
    said = [t["context_matches"] or t["kept"] or t["dropped"] or t["dropped_total_tokens"] for t in view["turns"]]
    assert not any(said)
    assert all("context_text" in t for t in view["turns"])
