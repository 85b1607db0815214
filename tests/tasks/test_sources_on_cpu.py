"""QA sources: the bundled copies of HotpotQA, NQ-open (JSONL and Search-R1 parquet) and Bamboogle, plain JSONL,
and errors that name the file, the line or row, and the problem."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from verl_mem1.tasks import QAItem, bundled_path, load_source, normalize_question

NQ_PARQUET = bundled_path("nq").parent / "nq_search_test.parquet"


def test_bundled_hotpotqa_dev_and_train():
    dev, train = load_source("hotpotqa"), load_source("hotpotqa-train")
    assert len(dev) == 300 and len(train) == 300
    assert load_source("hotpotqa-dev") == dev
    assert dev[0] == QAItem(
        "5a8ce55f554299441c6b9f62",
        'The band who released the debut album "Tinted Windows" had their first performance in what city?',
        ["Tulsa"],
        "hotpotqa",
    )
    assert not {i.id for i in dev} & {i.id for i in train}
    assert load_source(f"hotpotqa:{bundled_path('hotpotqa')}") == dev


def test_bundled_nq_jsonl():
    items = load_source("nq")
    assert len(items) == 3610 and {i.source for i in items} == {"nq"}
    assert items[0] == QAItem(
        "nq:1", "when was the last time anyone was on the moon", ["14 December 1972 UTC", "December 1972"], "nq"
    )
    assert items[-1].id == "nq:3610"  # line numbers: stable ids for a file without ids


def test_search_r1_parquet_same_questions_as_nq_jsonl():
    items = load_source(f"nq:{NQ_PARQUET}")
    assert len(items) == 3610
    assert items[0] == QAItem("test_0", "who got the first nobel prize in physics?", ["Wilhelm Conrad Röntgen"], "nq")
    jsonl = load_source("nq")
    assert {normalize_question(i.question) for i in items} == {normalize_question(i.question) for i in jsonl}


def test_parquet_falls_back_to_reward_model_target(tmp_path):
    frame = pd.read_parquet(NQ_PARQUET).head(3).drop(columns=["golden_answers"])
    frame.to_parquet(tmp_path / "t.parquet")
    items = load_source(f"nq:{tmp_path / 't.parquet'}")
    assert items[0].answers == ["Wilhelm Conrad Röntgen"] and len(items) == 3


def test_bundled_bamboogle():
    items = load_source("bamboogle")
    assert len(items) == 125
    assert items[0] == QAItem(
        "bamboogle:0",
        "Who was president of the United States in the year that Citibank was founded?",
        ["james madison"],
        "bamboogle",
    )


def test_hotpotqa_original_json_list(tmp_path):
    data = [
        {"_id": "abc", "question": "Q one?", "answer": "yes", "type": "comparison", "context": []},
        {"_id": "def", "question": " Q two? ", "answer": "Paris", "type": "bridge", "context": []},
    ]
    path = tmp_path / "hotpot_dev_distractor_v1.json"
    path.write_text(json.dumps(data))
    assert load_source(f"hotpotqa:{path}") == [
        QAItem("abc", "Q one?", ["yes"], "hotpotqa"),
        QAItem("def", "Q two?", ["Paris"], "hotpotqa"),
    ]


def test_generic_jsonl(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [
        {"question": "a?", "answers": ["x", "X2", "x", " "]},
        {"id": 7, "question": "b?", "answer": "y"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows[:1]) + "\n\n" + json.dumps(rows[1]) + "\n")
    items = load_source(f"jsonl:{path}")
    # duplicate and blank aliases dropped; the line number is the fallback id; the file stem names the source
    assert items == [QAItem("mine:1", "a?", ["x", "X2"], "mine"), QAItem("7", "b?", ["y"], "mine")]


def _write(tmp_path: Path, name: str, lines: list) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("kind", "name", "lines", "where", "problem"),
    [
        ("jsonl", "q.jsonl", [{"question": "a", "answer": "b"}, {"answer": "b"}], ":2", "missing field 'question'"),
        ("jsonl", "q.jsonl", [{"question": "  ", "answer": "b"}], ":1", "empty question"),
        ("jsonl", "q.jsonl", [{"question": "a"}], ":1", "missing answers"),
        ("jsonl", "q.jsonl", [{"question": "a", "answers": []}], ":1", "no answers"),
        ("jsonl", "q.jsonl", [{"question": "a", "answers": ["", " "]}], ":1", "no answers"),
        ("jsonl", "q.jsonl", [{"question": "a", "answers": [1]}], ":1", "list of strings"),
        ("jsonl", "q.jsonl", [{"question": 3, "answer": "b"}], ":1", "must be a string"),
        ("jsonl", "q.jsonl", [{"question": "a", "answer": "b"}, "{not json"], ":2", "invalid JSON"),
        ("jsonl", "q.jsonl", ["[1, 2]"], ":1", "expected a JSON object"),
        ("jsonl", "q.jsonl", [{"id": "x", "question": "a", "answer": "b"}] * 2, ":2", "duplicate id 'x'"),
        ("nq", "nq.jsonl", [{"question": "a", "answer": []}], ":1", "no answers"),
        ("hotpotqa", "h.jsonl", [{"id": "1", "question": "a", "answers": ["b"]}], ":1", "missing answers"),
        ("bamboogle", "b.json", ['[{"Question": "a", "Answer": "b"}, {"Question": "c"}]'], ": item 1", "missing"),
        ("bamboogle", "b.json", ['{"Question": "a"}'], "", "expected a JSON list"),
        ("hotpotqa", "h.json", ['[{"_id": 1, "question": "", "answer": "b"}]'], ": item 0", "empty question"),
        ("jsonl", "q.jsonl", [""], "", "no questions found"),
    ],
)
def test_bad_input_names_file_line_and_problem(tmp_path, kind, name, lines, where, problem):
    path = _write(tmp_path, name, lines)
    with pytest.raises(ValueError, match=re.escape(f"{path}{where}") + ".*" + re.escape(problem)):
        load_source(f"{kind}:{path}")


def test_bad_parquet_row_is_named(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b"], "question": ["q1?", ""], "golden_answers": [["x"], ["y"]]})
    frame.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'bad.parquet'}: row 1: empty question")):
        load_source(f"nq:{tmp_path / 'bad.parquet'}")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="junk.parquet: cannot read parquet"):
        load_source(f"nq:{tmp_path / 'junk.parquet'}")


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("squad:/x.jsonl", "unknown source kind 'squad'"),
        ("squad", "unknown source 'squad'"),
        ("jsonl", "needs a path"),
        ("hotpotqa-train:/x.jsonl", "bundled names take no path"),
        ("nq:", "empty path"),
        ("", "empty source spec"),
        ("nq:/nonexistent/nq.jsonl", "/nonexistent/nq.jsonl: file not found"),
    ],
)
def test_bad_specs(spec, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        load_source(spec)


def test_bundled_path_unknown():
    with pytest.raises(ValueError, match="unknown bundled source"):
        bundled_path("trivia")
