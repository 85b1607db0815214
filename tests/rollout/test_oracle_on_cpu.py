"""Scripted teacher episodes (``OracleBackend``, ``mem1 trajectories``): real BM25 retrieval server, the tiny model's
real Qwen2.5 tokenizer, tasks composed from the bundled HotpotQA."""

from __future__ import annotations

import asyncio
import json

import pytest

from verl_mem1.cli import main
from verl_mem1.protocol import get_tag_set
from verl_mem1.records import Task, task_from_mapping
from verl_mem1.rollout.backends.base import SamplingConfig
from verl_mem1.rollout.backends.oracle import OracleBackend, grounded_objectives, run_oracle_episodes
from verl_mem1.rollout.environment import RetrievalEnvironment
from verl_mem1.rollout.episode import EpisodeConfig
from verl_mem1.rollout.runner import read_episodes, write_episodes
from verl_mem1.tasks.compose import compose_tasks, write_tasks_parquet
from verl_mem1.tasks.rewards import normalize_answer, score_answer
from verl_mem1.tasks.sources import load_source
from verl_mem1.training.layout import pack_episode

TULSA = 'The band who released the debut album "Tinted Windows" had their first performance in what city?'


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _rows(objectives: int, count: int) -> list[dict]:
    return compose_tasks([load_source("hotpotqa-train")], objectives=objectives, count=count, seed=0)


def _tasks(objectives: int, count: int) -> list[Task]:
    return [task_from_mapping(row, "composed", i) for i, row in enumerate(_rows(objectives, count))]


def _play(tasks, tokenizer, url, config, *, concurrency=8):
    env = RetrievalEnvironment(url, topk=3)

    async def go():
        try:
            return await run_oracle_episodes(tasks, env, tokenizer, config, concurrency=concurrency, progress=False)
        finally:
            await env.aclose()

    return asyncio.run(go())


def _expected_context(policy: str, prompt: list[int], turns: list) -> list[int]:
    kept = turns[-1:] if policy == "mem1" else turns
    ids = list(prompt)
    for t in kept:
        ids += t.generated_ids + t.observation_ids
    return ids


def _retrieved(tokenizer, turn) -> str:
    """The observation's text between the hint and the closing info tag, decoded independently of the oracle."""
    text = tokenizer.decode(turn.observation_ids)
    return text.split("[/HINT]", 1)[1].rsplit("</info>", 1)[0]


@pytest.mark.parametrize("policy", ["mem1", "full"])
def test_records_are_valid_and_token_exact(policy, tokenizer, retrieval_url, tmp_path):
    tasks = _tasks(2, 6)
    records = _play(tasks, tokenizer, retrieval_url, EpisodeConfig(context=policy, max_new_tokens=256))
    write_episodes(tmp_path / "episodes.jsonl", records)
    records = read_episodes(tmp_path / "episodes.jsonl")  # check what was written
    assert [r.id for r in records] == [t.id for t in tasks]
    for record in records:
        assert record.sampling["oracle"] is True and record.context_policy == policy
        for t, turn in enumerate(record.turns):
            assert turn.context_ids[: len(record.prompt_ids)] == record.prompt_ids
            assert turn.context_ids == _expected_context(policy, record.prompt_ids, record.turns[:t])
            assert tokenizer.decode(turn.generated_ids, skip_special_tokens=False) == turn.text
            assert turn.generated_ids == tokenizer.encode(turn.text, add_special_tokens=False)
            assert turn.logprobs == [0.0] * len(turn.generated_ids) and turn.finish_reason == "stop"
            assert turn.text.startswith("<IS>") and turn.text.endswith(("</query>", "</answer>"))
        sample = pack_episode(record)
        assert int(sample.loss_mask.sum()) == sum(len(t.generated_ids) for t in record.turns)
        generated = sample.input_ids[sample.loss_mask.bool()].tolist()
        assert generated == [i for t in record.turns for i in t.generated_ids]


def test_two_objectives_search_each_question_then_answer_both(tokenizer, retrieval_url):
    tasks = _tasks(2, 8)
    records = _play(tasks, tokenizer, retrieval_url, EpisodeConfig(max_new_tokens=256))
    for task, record in zip(tasks, records, strict=True):
        q1, q2 = task.questions
        first, second, third = record.turns
        assert (first.action["kind"], first.action["text"]) == ("query", q1.strip())
        assert (second.action["kind"], second.action["text"]) == ("query", q2.strip())
        assert third.action["kind"] == "answer" and record.termination == "answer"
        assert "Q1: not yet found" in first.internal_state and "Q2: not yet found" in first.internal_state
        a1, a2 = record.final_answer.split("; ")
        assert a1 in task.ground_truth[0] and a2 in task.ground_truth[1]
        assert f"Q1 answer: {a1}." in second.internal_state and "Q2: not yet found" in second.internal_state
        assert f"Q1 answer: {a1}." in third.internal_state and f"Q2 answer: {a2}." in third.internal_state
        assert record.reward == 1.0
        assert score_answer(record.final_answer, record.ground_truth).em_per_objective == [1.0, 1.0]
        # the hint the oracle read before answering said it had turns to spare
        assert "4 turns left" in tokenizer.decode(second.observation_ids)


def test_grounding_keeps_only_answers_the_searches_returned(tokenizer, retrieval_url):
    tasks = _tasks(2, 12)
    records = _play(tasks, tokenizer, retrieval_url, EpisodeConfig(max_new_tokens=256))
    verdicts = [grounded_objectives(r, tokenizer) for r in records]
    kept = [r for r, v in zip(records, verdicts, strict=True) if all(v)]
    assert 0 < len(kept) < len(records), "BM25 finds some answers and misses others"
    for record, verdict in zip(records, verdicts, strict=True):
        for i, (aliases, grounded) in enumerate(zip(record.ground_truth, verdict, strict=True)):
            retrieved = normalize_answer(_retrieved(tokenizer, record.turns[i]))
            assert grounded == any(f" {normalize_answer(a)} " in f" {retrieved} " for a in aliases)
    for record in kept:
        assert score_answer(record.final_answer, record.ground_truth, reduce="mean").em == 1.0


def test_an_answer_the_search_did_not_return_is_ungrounded(tokenizer, retrieval_url):
    tasks = [
        Task("found", [TULSA], [["Tulsa"]]),
        Task("invented", [TULSA], [["Zanzibar Quokkaville"]]),  # a right answer (EM 1.0) no document holds
        Task("mixed", [TULSA, "Who is the invented mayor of Quokkaville?"], [["Tulsa"], ["Zanzibar Quokkaville"]]),
        # only the second alias is in the results; the oracle's state carries it to the answer (mem1 drops the rest)
        Task("alias", [TULSA, "Who wrote Stardust?"], [["T-Town Quokka", "Tulsa", "Quokka City"], ["Neil Gaiman"]]),
    ]
    # one at a time: tasks with one prompt but different answers cannot share an oracle
    found, invented, mixed, alias = (_play([t], tokenizer, retrieval_url, EpisodeConfig())[0] for t in tasks)
    assert [r.reward for r in (found, invented, mixed, alias)] == [1.0, 1.0, 1.0, 1.0]
    assert grounded_objectives(found, tokenizer) == [True]
    assert "tulsa" in _retrieved(tokenizer, found.turns[0]).lower()
    assert grounded_objectives(invented, tokenizer) == [False]
    assert grounded_objectives(mixed, tokenizer) == [True, False]
    assert alias.final_answer == "Tulsa; Neil Gaiman" and grounded_objectives(alias, tokenizer)[0]
    assert "Q1 answer: Tulsa." in alias.turns[1].internal_state
    last = alias.turns[2]
    assert last.context_ids == alias.prompt_ids + alias.turns[1].generated_ids + alias.turns[1].observation_ids


def test_search_r1_tags_come_from_the_tag_set(tokenizer, retrieval_url):
    tags = get_tag_set("search_r1")
    (record,) = _play(_tasks(2, 1), tokenizer, retrieval_url, EpisodeConfig(tags="search_r1", max_new_tokens=256))
    assert record.tag_set == "search_r1" and record.reward == 1.0
    assert [t.action["kind"] for t in record.turns] == ["query", "query", "answer"]
    assert record.turns[0].text.startswith(tags.open(tags.state)) and tags.open(tags.query) in record.turns[0].text
    assert "<IS>" not in record.turns[0].text and "<query>" not in record.turns[0].text
    assert "<information>" in tokenizer.decode(record.turns[0].observation_ids)


def test_max_new_tokens_truncates_with_finish_reason_length(tokenizer, retrieval_url):
    tasks = _tasks(1, 1)
    (record,) = _play(tasks, tokenizer, retrieval_url, EpisodeConfig(max_new_tokens=6, max_turns=3))
    assert [t.finish_reason for t in record.turns] == ["length"] * 3
    assert all(len(t.generated_ids) == len(t.logprobs) == 6 for t in record.turns)
    assert record.final_answer is None and record.reward == 0.0
    oracle = OracleBackend(tasks, tokenizer, EpisodeConfig(max_turns=3))
    whole = asyncio.run(oracle.generate(record.prompt_ids, SamplingConfig(max_new_tokens=512)))
    assert whole.finish_reason == "stop" and whole.token_ids[:6] == record.turns[0].generated_ids
    assert whole.extra == {"oracle": True}


def test_oracle_refuses_what_it_cannot_play(tokenizer):
    tasks = _tasks(2, 1)
    with pytest.raises(ValueError, match="need 3 turns"):
        OracleBackend(tasks, tokenizer, EpisodeConfig(max_turns=2))
    with pytest.raises(ValueError, match="no answers"):
        OracleBackend(tasks, tokenizer, EpisodeConfig(tags="webshop"))
    twin = Task("twin", tasks[0].questions, [["other"], ["answers"]], tasks[0].prompt_messages)
    twin.extra_info = dict(tasks[0].extra_info)  # composed alike: the same prompt once the budget is stated
    with pytest.raises(ValueError, match="same prompt but different answers"):
        OracleBackend([tasks[0], twin], tokenizer, EpisodeConfig())
    oracle = OracleBackend(tasks, tokenizer, EpisodeConfig())
    with pytest.raises(LookupError, match="none of the oracle's task prompts"):
        asyncio.run(oracle.generate(tokenizer.encode("a prompt of no task"), SamplingConfig()))


def test_cli_writes_kept_episodes_that_read_back(retrieval_url, tiny_model_dir, tokenizer, tmp_path, capsys):
    tasks = write_tasks_parquet(_rows(2, 10), tmp_path / "tasks.parquet")
    out = tmp_path / "episodes.jsonl"
    common = ["trajectories", "--policy", "oracle", "--tasks", str(tasks), "--retriever", retrieval_url]
    common += ["--tokenizer", str(tiny_model_dir), "--concurrency", "4"]
    assert main([*common, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    records = read_episodes(out)
    assert f"kept {len(records)}/10 oracle episodes" in printed and "mean 3.00 turns" in printed
    assert 0 < len(records) < 10
    for record in records:
        assert record.reward == 1.0 and all(grounded_objectives(record, tokenizer))
        assert record.sampling["oracle"] is True
        pack_episode(record)
    assert main([*common, "--out", str(tmp_path / "all.jsonl"), "--keep-ungrounded", "--limit", "5"]) == 0
    assert "kept 5/5" in capsys.readouterr().out
    assert len(read_episodes(tmp_path / "all.jsonl")) == 5


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["trajectories", "--help"])
    assert info.value.code == 0
    assert "--keep-ungrounded" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--policy": "greedy"}, "invalid choice"),
        ({"--limit": "0"}, "positive integer"),
        ({"--concurrency": "-1"}, "positive integer"),
        ({"--tasks": "missing.parquet"}, "not found"),
        ({"--tags": "html"}, "tag set"),
        ({"--context": "recent"}, "context"),
        ({"--max-turns": "2"}, "turn budget"),
        ({"--retriever": "ftp://nowhere"}, "retriever_url"),
        ({"--retriever": "http://127.0.0.1:9"}, "unreachable"),
        ({"--tokenizer": "/nonexistent/tokenizer"}, "tokenizer"),
    ],
)
def test_cli_bad_options_exit_2_naming_the_problem(change, message, tiny_model_dir, tmp_path, capsys):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"questions": [TULSA, "Who wrote Stardust?"], "answers": [["Tulsa"], ["Gaiman"]]}))
    options = {"--policy": "oracle", "--tasks": str(tasks), "--retriever": "http://127.0.0.1:9"}
    options |= {"--tokenizer": str(tiny_model_dir), "--out": str(tmp_path / "o.jsonl")}
    options |= change
    argv = ["trajectories", *(word for pair in options.items() for word in pair)]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err.lower()
    assert not (tmp_path / "o.jsonl").exists()
