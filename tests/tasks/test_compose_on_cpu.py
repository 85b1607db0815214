"""Composition of multi-objective tasks: determinism, no reuse, split hygiene, source mixing, counts, parquet."""

from __future__ import annotations

import re
from collections import Counter

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_mem1.protocol import SEARCH_R1, build_prompt_messages
from verl_mem1.records import load_tasks
from verl_mem1.tasks import (
    ABILITY,
    QAItem,
    bundled_path,
    compose_tasks,
    load_source,
    normalize_question,
    split_items,
    write_tasks_parquet,
)


def _pool(source: str, n: int, prefix: str = "") -> list[QAItem]:
    return [
        QAItem(f"{source}:{i}", f"{prefix}{source} question {i}?", [f"ans {i}", f"alias {i}"], source) for i in range(n)
    ]


@pytest.fixture(scope="module")
def hotpot() -> list[QAItem]:
    return load_source("hotpotqa")


@pytest.fixture(scope="module")
def bamboogle() -> list[QAItem]:
    return load_source("bamboogle")


def _question_keys(rows: list[dict]) -> list[str]:
    return [normalize_question(q) for row in rows for q in row["extra_info"]["questions"]]


def test_row_format(hotpot):
    rows = compose_tasks([hotpot], objectives=3, count=4, seed=1, max_turns=9, split="test")
    assert len(rows) == 4
    by_id = {item.id: item for item in hotpot}
    for index, row in enumerate(rows):
        info = row["extra_info"]
        assert row["id"] == f"test_{index}" and row["data_source"] == "hotpotqa" and row["ability"] == ABILITY
        assert set(info) == {
            "index", "split", "objectives", "questions", "question_ids", "question_sources", "tags", "max_turns"
        }  # fmt: skip
        assert (info["index"], info["split"], info["objectives"], info["tags"], info["max_turns"]) == (
            index,
            "test",
            3,
            "paper",
            9,
        )
        items = [by_id[i] for i in info["question_ids"]]
        assert info["questions"] == [i.question for i in items]
        assert row["reward_model"] == {"style": "rule", "ground_truth": [i.answers for i in items]}
        assert row["prompt"] == build_prompt_messages(info["questions"], max_turns=9)
        content = row["prompt"][0]["content"]
        for n, question in enumerate(info["questions"], 1):
            assert f"{n}. {question}" in content  # numbered, in ground-truth order
        assert "agent_name" not in row


def test_search_r1_tags_and_agent_name(hotpot):
    (row,) = compose_tasks([hotpot], objectives=2, count=1, seed=0, tags="search_r1", agent_name="mem1_agent")
    assert row["extra_info"]["tags"] == "search_r1" and row["agent_name"] == "mem1_agent"
    assert row["prompt"] == build_prompt_messages(row["extra_info"]["questions"], SEARCH_R1)
    assert "<search>" in row["prompt"][0]["content"]


def test_deterministic_for_a_seed(hotpot, bamboogle):
    for mix in (False, True):
        first = compose_tasks([hotpot, bamboogle], objectives=2, count=50, seed=7, mix_sources=mix)
        assert compose_tasks([hotpot, bamboogle], objectives=2, count=50, seed=7, mix_sources=mix) == first
        assert compose_tasks([hotpot, bamboogle], objectives=2, count=50, seed=8, mix_sources=mix) != first


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=3),
    objectives=st.integers(1, 5),
    seed=st.integers(0, 2**32),
    mix=st.booleans(),
)
def test_no_question_repeats_within_or_across_tasks(sizes, objectives, seed, mix):
    pools = [_pool(f"s{p}", size) for p, size in enumerate(sizes)]
    pools[0] += [QAItem("dup", "S1 QUESTION 0", ["other"], "s0")]  # same text as s1:0 once normalised
    unique = [sizes[0] + 1] + [size - (p == 1 and size > 0) for p, size in enumerate(sizes) if p]
    expected = sum(unique) // objectives if mix else sum(u // objectives for u in unique)
    feasible = expected > 0 if mix else all(u >= objectives for u in unique)
    feasible = feasible and all(size > 0 for size in sizes[1:])  # an empty source is an error
    if not feasible:
        with pytest.raises(ValueError, match="fewer than|not enough questions|has no questions"):
            compose_tasks(pools, objectives=objectives, count=None, seed=seed, mix_sources=mix)
        return
    rows = compose_tasks(pools, objectives=objectives, count=None, seed=seed, mix_sources=mix)
    assert len(rows) == expected
    keys = _question_keys(rows)
    assert len(keys) == len(set(keys))
    ids = [i for row in rows for i in row["extra_info"]["question_ids"]]
    assert len(ids) == len(set(ids))
    assert all(len(row["extra_info"]["questions"]) == objectives for row in rows)


@settings(max_examples=30, deadline=None)
@given(size=st.integers(2, 40), objectives=st.integers(1, 4), passes=st.integers(2, 4), seed=st.integers(0, 2**32))
def test_passes_use_each_question_once_per_pass_and_never_twice_in_a_task(size, objectives, passes, seed):
    pool = _pool("s", size)
    if size < objectives:
        with pytest.raises(ValueError):
            compose_tasks([pool], objectives=objectives, count=None, seed=seed, passes=passes)
        return
    rows = compose_tasks([pool], objectives=objectives, count=None, seed=seed, passes=passes)
    assert len(rows) == passes * (size // objectives)
    for row in rows:
        assert len(set(row["extra_info"]["question_ids"])) == objectives
    uses = Counter(i for row in rows for i in row["extra_info"]["question_ids"])
    assert max(uses.values()) <= passes
    assert len({row["id"] for row in rows}) == len(rows)


def test_one_pass_is_the_plain_composition_and_more_passes_meet_new_partners(hotpot):
    plain = compose_tasks([hotpot], objectives=2, count=None, seed=3)
    assert compose_tasks([hotpot], objectives=2, count=None, seed=3, passes=1) == plain
    twice = compose_tasks([hotpot], objectives=2, count=None, seed=3, passes=2)
    assert len(twice) == 2 * len(plain) == len(hotpot)
    assert twice[: len(plain)] == plain  # the first pass is the plain composition
    pairs = [frozenset(row["extra_info"]["question_ids"]) for row in twice]
    assert len(set(pairs)) == len(pairs)  # no task repeats an earlier pass's pair
    with pytest.raises(ValueError, match="passes must be a positive int"):
        compose_tasks([hotpot], objectives=2, count=None, seed=3, passes=0)
    with pytest.raises(ValueError, match="mix_sources"):
        compose_tasks([hotpot, hotpot[:10]], objectives=2, count=None, seed=3, passes=2, mix_sources=True)


def test_count_none_uses_as_many_as_possible(hotpot, bamboogle):
    apart = compose_tasks([hotpot, bamboogle], objectives=4, count=None, seed=0)
    assert len(apart) == 300 // 4 + 125 // 4
    mixed = compose_tasks([hotpot, bamboogle], objectives=4, count=None, seed=0, mix_sources=True)
    assert len(mixed) == (300 + 125) // 4


def test_sources_kept_apart_and_interleaved(hotpot, bamboogle):
    rows = compose_tasks([hotpot, bamboogle], objectives=2, count=None, seed=0)
    for row in rows:
        assert set(row["extra_info"]["question_sources"]) == {row["data_source"]}
    order = [row["data_source"] for row in rows]
    assert order[:6] == ["hotpotqa", "bamboogle"] * 3
    assert Counter(order) == {"hotpotqa": 150, "bamboogle": 62}
    assert order[-1] == "hotpotqa"  # the bigger source finishes alone


def test_count_is_shared_evenly_then_by_capacity(hotpot, bamboogle):
    counts = Counter(r["data_source"] for r in compose_tasks([hotpot, bamboogle], objectives=2, count=40, seed=0))
    assert counts == {"hotpotqa": 20, "bamboogle": 20}
    counts = Counter(r["data_source"] for r in compose_tasks([hotpot, bamboogle], objectives=3, count=100, seed=0))
    assert counts == {"bamboogle": 41, "hotpotqa": 59}  # bamboogle gives all it has (125 // 3)


def test_mix_sources_draws_each_task_across_sources(hotpot, bamboogle):
    rows = compose_tasks([hotpot, bamboogle], objectives=2, count=100, seed=0, mix_sources=True)
    assert all(row["data_source"] == "mix" for row in rows)
    assert all(sorted(row["extra_info"]["question_sources"]) == ["bamboogle", "hotpotqa"] for row in rows)
    firsts = Counter(row["extra_info"]["question_sources"][0] for row in rows)
    assert firsts["hotpotqa"] > 20 and firsts["bamboogle"] > 20  # position within a task is shuffled


def test_duplicates_across_sources_used_once_with_merged_aliases():
    nq_jsonl, nq_parquet = load_source("nq"), load_source(f"nq:{bundled_path('nq').parent / 'nq_search_test.parquet'}")
    rows = compose_tasks([nq_jsonl, nq_parquet], objectives=2, count=None, seed=0, mix_sources=True)
    assert len(rows) == 3610 // 2  # the parquet holds the same questions: nothing left from it
    with pytest.raises(ValueError, match=re.escape("source nq has 0 questions (3610 duplicate questions removed)")):
        compose_tasks([nq_jsonl, nq_parquet], objectives=2, count=None, seed=0)
    a = [QAItem("a1", "Who won?", ["X"], "a")]
    b = [QAItem("b1", "who WON", ["x", "Y"], "b"), QAItem("b2", "Other?", ["Z"], "b")]
    (row,) = compose_tasks([a, b], objectives=2, count=None, seed=0, mix_sources=True)
    gt = dict(zip(row["extra_info"]["question_ids"], row["reward_model"]["ground_truth"], strict=True))
    assert gt == {"a1": ["X", "x", "Y"], "b2": ["Z"]}


@pytest.mark.parametrize(
    ("pools", "kwargs", "message"),
    [
        (
            [_pool("bamboogle", 125)],
            {"count": 100},
            "source bamboogle has 125 questions; 100 tasks of 2 objectives need 200",
        ),
        (
            [_pool("a", 10), _pool("b", 5)],
            {"count": 8},
            "8 tasks of 2 objectives need 16 questions; the sources (a: 10 questions, b: 5 questions) make at most 7",
        ),
        (
            [_pool("a", 10), _pool("b", 5)],
            {"count": 8, "mix_sources": True},
            "8 tasks of 2 objectives need 16 questions; the sources (a: 10 questions, b: 5 questions) make at most 7",
        ),
        ([_pool("a", 10), _pool("b", 1)], {"count": None}, "source b has 1 questions, fewer than 2 objectives"),
        ([_pool("a", 1)], {"count": None, "mix_sources": True}, "not enough questions for one task of 2 objectives"),
        ([_pool("a", 4), []], {"count": 1}, "source #2 has no questions"),
        ([], {"count": 1}, "no sources given"),
        ([_pool("a", 4)], {"count": 0}, "count must be a positive int"),
        ([_pool("a", 4)], {"count": 1, "objectives": 0}, "objectives must be a positive int"),
        ([_pool("a", 4)], {"count": 1, "tags": "xml"}, "unknown tag set 'xml'"),
    ],
)
def test_errors_name_source_and_numbers(pools, kwargs, message):
    kwargs = {"objectives": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        compose_tasks(pools, **kwargs)


def _texts(items: list[QAItem]) -> set[str]:
    return {normalize_question(i.question) for i in items}


@settings(max_examples=40, deadline=None)
@given(
    split_seed=st.integers(0, 2**32),
    fraction=st.floats(0.05, 0.95),
    objectives=st.integers(1, 4),
    seeds=st.tuples(st.integers(0, 1000), st.integers(0, 1000)),
)
def test_split_hygiene(split_seed, fraction, objectives, seeds):
    # the same questions in two sources, reordered, with duplicates that differ only in case/punctuation
    a = _pool("a", 40) + [QAItem("a-dup", "A QUESTION 3", ["x"], "a")]
    b = [QAItem(f"b{i}", f"a question {i}", ["y"], "b") for i in reversed(range(0, 40, 3))]
    train, test = [], []
    for pool in (a, b):
        tr, te = split_items(pool, fraction, split_seed)
        assert sorted(tr + te, key=pool.index) == pool and not set(map(id, tr)) & set(map(id, te))
        train.append(tr)
        test.append(te)
    assert not _texts(train[0] + train[1]) & _texts(test[0] + test[1])
    # splitting is per question, so it is the same whatever the order or company of the question
    assert _texts(split_items(list(reversed(a)), fraction, split_seed)[1]) == _texts(test[0])
    # raising the fraction only moves questions from train to test
    assert _texts(test[0]) <= _texts(split_items(a, min(1.0, fraction + 0.1), split_seed)[1])
    # composed tasks inherit the hygiene whatever N and composition seed
    rows_train, rows_test = [], []
    try:
        rows_train = compose_tasks([p for p in train if p], objectives=objectives, count=None, seed=seeds[0])
    except ValueError:
        pass
    try:
        rows_test = compose_tasks([p for p in test if p], objectives=objectives, count=None, seed=seeds[1])
    except ValueError:
        pass
    assert not set(_question_keys(rows_train)) & set(_question_keys(rows_test))


def test_split_fraction_on_real_data_and_edges():
    items = load_source("nq")
    train, test = split_items(items, 0.1, seed=0)
    assert 0.08 < len(test) / len(items) < 0.12 and len(train) + len(test) == len(items)
    assert split_items(items, 0.1, seed=0) == (train, test)
    assert split_items(items, 0.1, seed=1)[1] != test
    assert split_items(items, 0.0) == (items, []) and split_items(items, 1.0) == ([], items)
    with pytest.raises(ValueError, match="test_fraction must be in"):
        split_items(items, 1.5)


def test_parquet_round_trip_loads_with_load_tasks(tmp_path, hotpot, bamboogle):
    rows = compose_tasks([hotpot, bamboogle], objectives=3, count=10, seed=0, mix_sources=True, tags="search_r1")
    path = write_tasks_parquet(rows, tmp_path / "sub" / "tasks.parquet")
    tasks = load_tasks(path)
    assert len(tasks) == 10
    for row, task in zip(rows, tasks, strict=True):
        assert task.id == row["id"] and task.data_source == row["data_source"]
        assert task.questions == row["extra_info"]["questions"]
        assert task.ground_truth == row["reward_model"]["ground_truth"]
        assert task.prompt_messages == row["prompt"] and task.num_objectives == 3
    frame = pd.read_parquet(path)
    assert [[list(a) for a in gt] for gt in (r["ground_truth"] for r in frame["reward_model"])] == [
        r["reward_model"]["ground_truth"] for r in rows
    ]
    with pytest.raises(ValueError, match="no rows to write"):
        write_tasks_parquet([], tmp_path / "empty.parquet")


def test_verl_rl_dataset_reads_composed_parquet(tmp_path, hotpot, monkeypatch):
    import datasets
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))  # keep ~/.cache clean

    rows = compose_tasks([hotpot], objectives=2, count=4, seed=0)
    path = write_tasks_parquet(rows, tmp_path / "tasks.parquet")
    config = OmegaConf.create({"filter_overlong_prompts": False, "cache_dir": str(tmp_path / "cache")})
    dataset = RLHFDataset([str(path)], None, config)
    assert len(dataset) == 4
    sample = dataset[1]
    assert sample["data_source"] == "hotpotqa" and sample["prompt"] == rows[1]["prompt"]
    assert sample["reward_model"]["ground_truth"] == rows[1]["reward_model"]["ground_truth"]
    assert sample["extra_info"]["questions"] == rows[1]["extra_info"]["questions"]
