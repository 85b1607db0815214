"""Task files: verl RL parquet (incl. Search-R1's) and JSONL, with errors that name file and line."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from verl_mem1.demo import bundled_hotpotqa
from verl_mem1.records import load_tasks


def test_bundled_hotpotqa_jsonl():
    tasks = load_tasks(bundled_hotpotqa("dev"), limit=5)
    assert len(tasks) == 5
    assert tasks[0].questions[0].startswith("The band who released")
    assert tasks[0].ground_truth == [["Tulsa"]] and tasks[0].prompt_messages is None


def test_search_r1_parquet(tmp_path):
    prompt = [{"role": "user", "content": "Answer the given question... Question: who sings?"}]
    frame = pd.DataFrame(
        {
            "id": ["test_0"],
            "question": ["who sings?"],
            "golden_answers": [["A", "B"]],
            "data_source": ["nq"],
            "prompt": [prompt],
            "ability": ["fact-reasoning"],
            "reward_model": [{"ground_truth": {"target": ["A", "B"]}, "style": "rule"}],
            "extra_info": [{"index": 0, "split": "test"}],
        }
    )
    frame.to_parquet(tmp_path / "t.parquet")
    (task,) = load_tasks(tmp_path / "t.parquet")
    assert task.ground_truth == [["A", "B"]] and task.data_source == "nq" and task.id == "test_0"
    assert task.prompt_messages == prompt and task.questions == ["who sings?"]


def test_multi_objective_jsonl(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [
        {"questions": ["q1", "q2"], "answers": [["a1", "alias"], ["a2"]]},
        {"question": "q3", "answers": ["x", "y"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    multi, single = load_tasks(path)
    assert multi.num_objectives == 2 and multi.ground_truth == [["a1", "alias"], ["a2"]]
    assert single.ground_truth == [["x", "y"]]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", ":2: invalid JSON"),
        ('{"answers": ["a"]}', "neither"),
        ('{"question": "q"}', "no answers"),
        ('{"question": " ", "answer": "a"}', "empty question"),
        ('{"questions": ["a", "b"], "answers": [["x"]]}', "2 questions but 1"),
        ('{"question": "q", "answers": [1, 2]}', "strings"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok", "answer": "a"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as info:
        load_tasks(path)
    assert "bad.jsonl" in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tasks(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no tasks"):
        load_tasks(tmp_path / "empty.jsonl")
