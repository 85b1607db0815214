"""The ``mem1`` command: every subcommand has --help, and the main paths run end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from verl_mem1.cli import main

SUBCOMMANDS = [
    [],
    ["tiny-model"],
    ["model"],
    ["trajectories"],
    ["sft"],
    ["rollout"],
    ["demo"],
    ["corpus"],
    ["corpus", "hotpotqa"],
    ["index"],
    ["index", "build"],
    ["serve"],
    ["serve", "retrieval"],
    ["serve", "llm"],
    ["serve", "websearch"],
    ["compose"],
    ["eval"],
    ["report"],
    ["curve"],
    ["compare"],
    ["train"],
    ["parity"],
    ["view"],
    ["webshop-tasks"],
]


def test_every_subcommand_is_in_the_help_list():
    from verl_mem1.cli import build_parser

    actions = [a for a in build_parser()._subparsers._group_actions if a.choices]
    assert set(actions[0].choices) == {words[0] for words in SUBCOMMANDS if words}


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "mem1")
def test_help_everywhere(words, capsys):
    with pytest.raises(SystemExit) as info:
        main([*words, "--help"])
    assert info.value.code == 0
    assert "usage: mem1" in capsys.readouterr().out


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "verl_mem1.cli", "--help"], capture_output=True, text=True, check=True)
    for name in ("rollout", "demo", "serve", "index", "tiny-model"):
        assert name in out.stdout


@pytest.mark.e2e
def test_rollout_end_to_end(tiny_model_dir, retrieval_url, tmp_path, capsys):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        json.dumps(
            {"questions": ["Who wrote Stardust?", "Where is Tulsa?"], "answers": [["Neil Gaiman"], ["Oklahoma"]]}
        )
        + "\n"
    )
    out = tmp_path / "episodes.jsonl"
    code = main(
        [
            "rollout",
            "--model", str(tiny_model_dir),
            "--tasks", str(tasks),
            "--retriever", retrieval_url,
            "--context", "window:1",
            "--max-turns", "3",
            "--max-new-tokens", "8",
            "--invalid-penalty", "0.25",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["context_policy"] == "window:1" and len(record["turns"]) == 3
    # the random model answers nothing right: its reward is the EM (0) less the penalty for each invalid turn
    invalid = sum(turn["action"]["kind"] == "invalid" for turn in record["turns"])
    assert invalid > 0 and record["reward"] == -0.25 * invalid
    assert record["ground_truth"] == [["Neil Gaiman"], ["Oklahoma"]]
    turn = record["turns"][1]
    for key in ("context_ids", "generated_ids", "logprobs", "action", "observation_ids", "timings"):
        assert key in turn
    assert "wrote 1 episodes" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--context", "recent", "context"), ("--tags", "html", "tag set"), ("--tasks", "missing.jsonl", "not found")],
)
def test_rollout_bad_options_fail_at_start(flag, value, message, tiny_model_dir, tmp_path, capsys):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"question": "q", "answer": "a"}\n')
    options = {"--model": str(tiny_model_dir), "--tasks": str(tasks), "--retriever": "http://127.0.0.1:9"}
    options.update({"--out": str(tmp_path / "o.jsonl"), flag: value})
    assert main(["rollout", *(word for pair in options.items() for word in pair)]) == 2
    assert message in capsys.readouterr().err.lower()
