"""The episode loop end to end: real tiny model, real retrieval server, token-exact contexts."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import ScriptedBackend
from verl_mem1.protocol import PAPER, format_documents, parse_turn
from verl_mem1.records import EpisodeRecord, Task
from verl_mem1.rollout.environment import RetrievalEnvironment
from verl_mem1.rollout.episode import EpisodeConfig, default_max_turns, run_episode
from verl_mem1.rollout.runner import read_episodes, run_episodes, write_episodes

QUESTIONS = [
    ("hp1", "Which city hosted the band Tinted Windows' first performance?", ["Tulsa"]),
    ("hp2", "Who wrote the novel that the film Stardust is based on?", ["Neil Gaiman"]),
    ("hp3", "Were Scott Derrickson and Ed Wood of the same nationality?", ["yes"]),
]


def _tasks() -> list[Task]:
    return [Task(id=i, questions=[q], ground_truth=[a]) for i, q, a in QUESTIONS]


def expected_context(policy: str, prompt: list[int], turns: list) -> list[int]:
    """What each policy promises, written out independently of the policy classes."""
    keep = {"mem1": 1, "full": len(turns), "window:2": 2}[policy]
    kept = turns[len(turns) - keep :] if keep else []
    ids = list(prompt)
    for t in kept:
        ids += t.generated_ids + t.observation_ids
    return ids


@pytest.mark.parametrize("policy", ["mem1", "full", "window:2"])
def test_contexts_are_exact_and_logprobs_match_plain_transformers(
    policy, tiny_backend, retrieval_url, recompute_logprobs, tmp_path
):
    config = EpisodeConfig(max_turns=8, max_new_tokens=12, temperature=1.0, context=policy)
    env = RetrievalEnvironment(retrieval_url)

    async def go():
        try:
            return await run_episodes(_tasks(), tiny_backend, env, tiny_backend.tokenizer, config, progress=False)
        finally:
            await env.aclose()

    records = asyncio.run(go())
    write_episodes(tmp_path / "episodes.jsonl", records)
    records = read_episodes(tmp_path / "episodes.jsonl")  # check what was written, not what was in memory
    assert [r.id for r in records] == ["hp1", "hp2", "hp3"]
    max_delta = 0.0
    for record in records:
        assert len(record.turns) == 8, "a random model never answers, so episodes run to the turn limit"
        assert record.termination == "max_turns"
        for t, turn in enumerate(record.turns):
            assert turn.context_ids == expected_context(policy, record.prompt_ids, record.turns[:t])
            assert len(turn.generated_ids) == len(turn.logprobs) > 0
            again = recompute_logprobs(tiny_backend.model, turn.context_ids, turn.generated_ids, 1.0)
            max_delta = max(max_delta, max(abs(a - b) for a, b in zip(again, turn.logprobs, strict=True)))
            assert (turn.observation_ids == []) == (t == 7), "every turn but the last gets an observation"
    assert max_delta <= 1e-4
    # the episodes ran concurrently and were decoded in shared batches
    assert max(tiny_backend.batch_sizes) > 1


def _play(backend, env, tokenizer, **config):
    task = Task(id="t", questions=[QUESTIONS[0][1]], ground_truth=[["Tulsa"]])
    exact = lambda answer, truth: float(answer is not None and answer.strip() in truth[0])  # noqa: E731
    return asyncio.run(run_episode(task, backend, env, tokenizer, EpisodeConfig(**config), reward_fn=exact))


def test_query_observation_answer_flow(tiny_backend, retrieval_url):
    tok = tiny_backend.tokenizer
    script = [
        "<IS>Need the band's first show.</IS><query>Tinted Windows band first performance</query>",
        "<IS>It was in Tulsa.</IS><answer>Tulsa</answer>",
    ]
    backend = ScriptedBackend(tiny_backend.model, tok, script)
    record = _play(backend, RetrievalEnvironment(retrieval_url, topk=3), tok, max_turns=4)
    assert record.termination == "answer" and record.final_answer == "Tulsa" and record.reward == 1.0
    first, second = record.turns
    assert first.action == {"kind": "query", "text": "Tinted Windows band first performance", "reason": ""}
    assert first.internal_state == "Need the band's first show."
    observation = tok.decode(first.observation_ids)
    assert observation.lstrip().startswith("<info>")
    assert "3" in observation.split("\n")[2], "the hint says 3 turns are left"
    assert "Tinted Windows (band)" in observation, "BM25 finds the supporting paragraph"
    assert observation.count("Doc ") == 3
    assert second.context_ids == record.prompt_ids + first.generated_ids + first.observation_ids
    assert second.observation_ids == []


def test_observation_is_formatted_search_results(tiny_backend, retrieval_url):
    env = RetrievalEnvironment(retrieval_url, topk=2)

    async def go():
        try:
            return await env.search(["Tinted Windows band"]), await env.observe("Tinted Windows band")
        finally:
            await env.aclose()

    (docs,), body = asyncio.run(go())
    assert len(docs) == 2 and body == format_documents(docs)


def test_invalid_actions_continue_with_a_reason_or_end(tiny_backend, retrieval_url):
    tok = tiny_backend.tokenizer
    env = RetrievalEnvironment(retrieval_url)
    backend = ScriptedBackend(tiny_backend.model, tok, ["<IS>hmm</IS> no action here", "<answer>Tulsa</answer>"])
    record = _play(backend, env, tok, max_turns=3)
    assert [t.action["kind"] for t in record.turns] == ["invalid", "answer"]
    reason = record.turns[0].action["reason"]
    assert reason and reason in tok.decode(record.turns[0].observation_ids)
    backend = ScriptedBackend(tiny_backend.model, tok, ["<query></query>"])
    record = _play(backend, env, tok, max_turns=3, on_invalid="end")
    assert record.termination == "invalid_action" and len(record.turns) == 1 and record.reward == 0.0


def test_last_turn_hint_demands_an_answer(tiny_backend, retrieval_url):
    tok = tiny_backend.tokenizer
    backend = ScriptedBackend(tiny_backend.model, tok, ["<query>Tulsa</query>", "<query>Tulsa Oklahoma</query>"])
    record = _play(backend, RetrievalEnvironment(retrieval_url), tok, max_turns=2)
    assert record.termination == "max_turns" and record.final_answer is None and record.reward == 0.0
    last_hint = tok.decode(record.turns[0].observation_ids)
    assert "answer" in last_hint.lower() and "last" in last_hint.lower()


def test_context_limit_ends_the_episode(tiny_backend, retrieval_url):
    tok = tiny_backend.tokenizer
    backend = ScriptedBackend(tiny_backend.model, tok, ["<query>Tulsa</query>"] * 5)
    record = _play(
        backend,
        RetrievalEnvironment(retrieval_url),
        tok,
        max_turns=5,
        context="full",
        max_context_tokens=700,
        max_new_tokens=8,
    )
    assert record.termination == "context_limit"
    assert all(len(t.context_ids) + 1 <= 700 for t in record.turns)


def test_search_r1_tags_parse_and_stop(tiny_backend, retrieval_url):
    tok = tiny_backend.tokenizer
    script = ["<think>look it up</think><search>Tinted Windows</search>", "<think>ok</think><answer>Tulsa</answer>"]
    backend = ScriptedBackend(tiny_backend.model, tok, script)
    record = _play(backend, RetrievalEnvironment(retrieval_url), tok, max_turns=3, tags="search_r1")
    assert record.tag_set == "search_r1" and record.final_answer == "Tulsa"
    assert "<information>" in tok.decode(record.turns[0].observation_ids)
    assert "<search>" in tok.decode(record.prompt_ids)
    assert EpisodeConfig(tags="search_r1").sampling().stop == ("</search>", "</answer>")


def test_record_roundtrip_and_metrics():
    record = EpisodeRecord(
        id="x",
        data_source="d",
        questions=["q"],
        ground_truth=[["a"]],
        context_policy="mem1",
        tag_set="paper",
        sampling={"temperature": 1.0},
        prompt_ids=[1, 2, 3],
    )
    assert record.peak_tokens == 3
    assert EpisodeRecord.from_dict(record.to_dict()) == record


@pytest.mark.parametrize(
    "bad",
    [
        {"context": "window:0"},
        {"context": "last"},
        {"tags": "xml"},
        {"max_turns": 0},
        {"on_invalid": "retry"},
        {"temperature": -1},
        {"max_new_tokens": 0},
    ],
)
def test_bad_config_fails_at_start(bad):
    with pytest.raises(ValueError):
        EpisodeConfig(**bad)


def test_default_turn_budget():
    assert default_max_turns(1) == 6 and default_max_turns(7) == 6 and default_max_turns(8) == 20


def test_parse_turn_is_what_the_loop_uses():
    assert parse_turn("<IS>s</IS><query>q</query>", PAPER).action.text == "q"
