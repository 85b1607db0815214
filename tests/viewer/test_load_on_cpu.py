"""Reading episodes for the viewer: every writer's shape, and errors that name the file and line."""

from __future__ import annotations

import json

import pytest

from verl_mem1.records import EPISODES_DIR, EpisodeRecord, episode_log_row
from verl_mem1.viewer.load import episode_files, load_episodes


def _records(run):
    return [EpisodeRecord.from_dict(json.loads(line)) for line in (run / "episodes.jsonl").read_text().splitlines()]


def test_an_eval_folder_gives_its_episodes_and_the_model_of_its_metrics(eval_runs, tiny_model_dir):
    loaded = load_episodes([eval_runs["mem1"]])
    assert [e.record for e in loaded] == _records(eval_runs["mem1"])
    assert {e.model for e in loaded} == {str(tiny_model_dir)} and {e.step for e in loaded} == {None}
    assert loaded[0].source == f"{eval_runs['mem1'] / 'episodes.jsonl'}:1"
    assert len(load_episodes([eval_runs["mem1"], eval_runs["full"] / "episodes.jsonl"], limit=3)) == 3
    both = load_episodes([eval_runs["mem1"].parent])  # a folder of runs
    assert sorted(e.record.context_policy for e in both) == ["full", "full", "mem1", "mem1"]


def test_agent_loop_rows_carry_their_step_and_model(eval_runs, tmp_path):
    dump = tmp_path / "rollouts"
    (dump / EPISODES_DIR).mkdir(parents=True)
    (dump / "3.jsonl").write_text('{"input": "x", "output": "y", "score": 0.0, "step": 3}\n')  # verl's own dump
    records = _records(eval_runs["mem1"])
    rows = [episode_log_row(r, step=3, model="some/model") for r in records]
    (dump / EPISODES_DIR / "host-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert episode_files([dump]) == [dump / EPISODES_DIR / "host-1.jsonl"], "the folder means the agent loop's files"
    loaded = load_episodes([dump])
    assert [e.record for e in loaded] == records and {(e.step, e.model) for e in loaded} == {(3, "some/model")}
    with pytest.raises(ValueError, match=r"3\.jsonl:1: verl's own generation dump .*mem1_episodes"):
        load_episodes([dump / "3.jsonl"])


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["RECORD", "{not json"], r"bad\.jsonl:2: invalid JSON"),
        (["[1, 2]"], r"bad\.jsonl:1: expected a JSON object"),
        (['{"turns": [], "prompt_ids": [1]}'], r"bad\.jsonl:1: not a MEM1 episode record \(.*missing"),
        (['{"mem1_episode": "text"}'], r"bad\.jsonl:1: 'mem1_episode' is not an episode record"),
        (['{"question": "q"}'], r"bad\.jsonl:1: not a MEM1 episode record \(no 'turns'"),
    ],
)
def test_a_malformed_line_is_named_by_file_and_line(eval_runs, tmp_path, lines, message):
    record = (eval_runs["mem1"] / "episodes.jsonl").read_text().splitlines()[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(record if line == "RECORD" else line for line in lines) + "\n")
    with pytest.raises(ValueError, match=message):
        load_episodes([bad])


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="episode file not found: .*nope.jsonl"):
        load_episodes([tmp_path / "nope.jsonl"])
    with pytest.raises(FileNotFoundError, match=r"no episodes.jsonl, mem1_episodes/\*.jsonl, .* or \*/episodes"):
        load_episodes([tmp_path])


def test_the_command_names_a_bad_input_and_exits_2(eval_runs, tmp_path, capsys):
    from verl_mem1.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text((eval_runs["mem1"] / "episodes.jsonl").read_text() + "{oops\n")
    assert main(["view", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert f"mem1 view: error: {bad}:3: invalid JSON" in capsys.readouterr().err
    alone = tmp_path / "alone.jsonl"  # no metrics.json beside it: nothing says which tokenizer decodes it
    alone.write_text((eval_runs["mem1"] / "episodes.jsonl").read_text())
    assert main(["view", str(alone), "--out", str(tmp_path / "out")]) == 2
    assert "alone.jsonl:1: no model is recorded with this episode" in capsys.readouterr().err
    assert not (tmp_path / "out" / "index.html").exists()
