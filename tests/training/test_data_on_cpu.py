"""``training/data.py``: where a run's tasks come from and the order it takes them in."""

from __future__ import annotations

import pytest

from verl_mem1.records import Task
from verl_mem1.training.data import BatchSampler, load_split


def _tasks(n: int) -> list[Task]:
    return [Task(id=str(i), questions=[f"q{i}"], ground_truth=[["a"]]) for i in range(n)]


def test_every_epoch_is_a_permutation_reshuffled_by_seed():
    sampler = BatchSampler(_tasks(6), 4, seed=1)
    ids = [t.id for _ in range(3) for t in sampler.next_batch()]  # 12 tasks: exactly two epochs
    first, second = ids[:6], ids[6:]
    assert sorted(first) == sorted(second) == [str(i) for i in range(6)]
    assert first != second, "each epoch is reshuffled"
    again = BatchSampler(_tasks(6), 4, seed=1)
    assert [t.id for t in again.next_batch()] == ids[:4], "the order is a function of the seed"
    plain = BatchSampler(_tasks(3), 2, shuffle=False)
    assert [t.id for _ in range(3) for t in plain.next_batch()] == ["0", "1", "2", "0", "1", "2"]


def test_resuming_from_the_state_continues_exactly():
    sampler = BatchSampler(_tasks(5), 3, seed=7)
    sampler.next_batch()
    state = sampler.state_dict()
    expected = [t.id for _ in range(4) for t in sampler.next_batch()]
    resumed = BatchSampler(_tasks(5), 3, seed=7)
    resumed.load_state_dict(state)
    assert [t.id for _ in range(4) for t in resumed.next_batch()] == expected


def test_load_split_checks_its_inputs(tmp_path):
    from omegaconf import OmegaConf

    from verl_mem1.config import ConfigError, Mem1Config

    path = tmp_path / "tasks.jsonl"
    path.write_text('{"question": "q", "answers": ["a"]}\n')
    cfg = OmegaConf.create({"data": {"train_files": [str(path)], "train_batch_size": 2}})
    with pytest.raises(ConfigError, match="only 1 training tasks"):
        load_split(cfg, Mem1Config(), "train", root=tmp_path, url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="split must be one of"):
        load_split(cfg, Mem1Config(), "test", root=tmp_path, url="")
