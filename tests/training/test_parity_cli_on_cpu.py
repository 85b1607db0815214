"""``mem1 parity``: the report, its JSON, the table, and the exit status."""

from __future__ import annotations

import argparse
import json

import pytest

from verl_mem1.cli.parity import add_parity_command
from verl_mem1.rollout.runner import read_episodes, write_episodes
from verl_mem1.training import format_report, parity_report


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mem1")
    add_parity_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_parity_json(episodes_by_config, tiny_model_dir, capsys):
    _, path = episodes_by_config[("mem1", 0.7)]
    argv = ["parity", "--model", str(tiny_model_dir), "--episodes", str(path), "--json", "--eager-flex"]
    assert _run([*argv, "--backends", "dense", "flex", "segmented", "segment_groups", "per_turn"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["tolerance"] == 1e-4
    assert set(report["backends"]) == {"dense", "flex", "segmented", "segment_groups", "per_turn"}
    records = read_episodes(path)
    generated = sum(len(t.generated_ids) for r in records for t in r.turns)
    assert report["generated_tokens"] == generated and report["episodes"] == len(records)
    assert report["per_turn_tokens"] > report["packed_tokens"] > 0
    for name, backend in report["backends"].items():
        assert backend["tokens"] == generated and backend["max_abs_delta"] <= 1e-4, name
    assert report["backends"]["per_turn"]["forward_tokens"] == report["per_turn_tokens"]


def test_parity_table_and_failure_exit(episodes_by_config, tiny_model_dir, tmp_path, capsys):
    records, _ = episodes_by_config[("window:2", 1.0)]
    records = [records[0]]
    tampered = read_episodes(episodes_by_config[("window:2", 1.0)][1])[:1]
    tampered[0].turns[3].logprobs[0] += 0.01  # as if the rollout had scored a different context
    path = tmp_path / "tampered.jsonl"
    write_episodes(path, tampered)
    base = ["parity", "--model", str(tiny_model_dir), "--episodes", str(path), "--eager-flex"]
    assert _run([*base, "--backends", "segment_groups"]) == 1
    capsys.readouterr()
    assert _run([*base, "--backends", "dense", "per_turn"]) == 1
    captured = capsys.readouterr()
    assert "| dense |" in captured.out and "| NO |" in captured.out and "parity FAILED" in captured.err
    assert _run([*base, "--backends", "dense", "--tolerance", "0.02"]) == 0
    assert "| yes |" in capsys.readouterr().out


def test_parity_report_api(episodes_by_config, training_model):
    records, _ = episodes_by_config[("full", 1.0)]
    report = parity_report(training_model, records[:1], ["segmented", "per_turn"])
    assert report["ok"] and report["token_ratio"] >= 1.0
    assert "segmented" in format_report(report)
    with pytest.raises(ValueError, match="unknown backend"):
        parity_report(training_model, records[:1], ["bogus"])


def test_parity_help_is_cheap_to_import():
    import subprocess
    import sys

    code = (
        "import sys, verl_mem1.training.parity as p, verl_mem1.cli.parity, argparse; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
