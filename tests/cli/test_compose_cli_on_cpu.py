"""``mem1 compose``, driven through a parser built with ``add_compose_command`` as the CLI wires it."""

from __future__ import annotations

import argparse
import json

import pytest

from verl_mem1.cli.compose import add_compose_command
from verl_mem1.records import load_tasks
from verl_mem1.tasks import normalize_question


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mem1")
    add_compose_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _texts(tasks) -> set[str]:
    return {normalize_question(q) for task in tasks for q in task.questions}


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        _run(["compose", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--source", "--objectives", "--count", "--seed", "--out", "--test-out", "--test-fraction"):
        assert option in out
    assert "--mix-sources" in out and "search_r1" in out and "hotpotqa-train" in out


def _argv(tmp_path, name: str, seed: int, *extra: str) -> list[str]:
    return [
        "compose", "--source", "hotpotqa-train", "--source", "bamboogle", "--objectives", "2", "--seed", str(seed),
        "--out", str(tmp_path / f"{name}_train.parquet"), "--test-out", str(tmp_path / f"{name}_test.parquet"),
        "--test-fraction", "0.2", *extra,
    ]  # fmt: skip


def test_compose_train_and_test(tmp_path, capsys):
    extra = ["--count", "60", "--tags", "search_r1", "--agent-name", "mem1", "--max-turns", "8"]
    assert _run(_argv(tmp_path, "a", 3, *extra)) == 0
    assert "wrote 60 tasks of 2 objectives" in capsys.readouterr().out
    train, test = load_tasks(tmp_path / "a_train.parquet"), load_tasks(tmp_path / "a_test.parquet")
    assert len(train) == 60 and len(test) > 20
    assert not _texts(train) & _texts(test)
    assert {t.data_source for t in train} == {"hotpotqa", "bamboogle"}
    assert train[0].extra_info["tags"] == "search_r1" and train[0].extra_info["max_turns"] == 8
    assert "<search>" in train[0].prompt_messages[0]["content"]
    # the split does not depend on the composition seed, N or mixing: another run's test set is still disjoint
    argv = _argv(tmp_path, "b", 4, "--mix-sources")
    argv[argv.index("--objectives") + 1] = "3"
    assert _run(argv) == 0
    assert not _texts(train) & _texts(load_tasks(tmp_path / "b_test.parquet"))


def test_compose_jsonl_source_all_tasks(tmp_path, capsys):
    src = tmp_path / "mine.jsonl"
    src.write_text("".join(json.dumps({"question": f"q{i}?", "answers": [f"a{i}"]}) + "\n" for i in range(9)))
    out = tmp_path / "tasks.parquet"
    assert _run(["compose", "--source", f"jsonl:{src}", "--objectives", "4", "--seed", "0", "--out", str(out)]) == 0
    tasks = load_tasks(out)
    assert len(tasks) == 2 and all(t.data_source == "mine" and t.num_objectives == 4 for t in tasks)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--source", "trivia"], "unknown source 'trivia'"),
        (["--source", "jsonl:/nonexistent.jsonl"], "/nonexistent.jsonl: file not found"),
        (["--source", "bamboogle", "--count", "100"], "source bamboogle has 125 questions; 100 tasks of 2 objectives"),
        (
            ["--source", "bamboogle", "--test-out", "t.parquet", "--test-count", "50"],
            "test split: source bamboogle has",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _run(["compose", "--objectives", "2", "--seed", "0", "--out", "o.parquet", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mem1 compose: error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize(
    "extra",
    [
        ["--objectives", "0"],
        ["--objectives", "x"],
        ["--count", "-1"],
        ["--test-fraction", "1.5"],
        ["--tags", "xml"],
    ],
)
def test_bad_arguments_are_rejected_by_argparse(extra, capsys):
    base = {"--objectives": "2", "--seed": "0", "--out": "o.parquet", "--source": "nq"}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        base[flag] = value
    with pytest.raises(SystemExit) as exc:
        _run(["compose", *[x for kv in base.items() for x in kv]])
    assert exc.value.code == 2
    assert extra[0] in capsys.readouterr().err
