"""Where a training run's tasks come from, and the order it takes them in.

Tasks come from ``data.train_files``/``data.val_files`` (verl RL parquet or JSONL), else from WebShop goals on the
run's shop (``mem1.train_goals``/``val_goals``), else they are composed once under the run folder from a question
source (``mem1.train_source``/``val_source``, ``mem1.objectives`` questions per task). ``BatchSampler`` hands them
(or SFT's episode records) out batch by batch, reshuffled every epoch, with a state that checkpoints and resumes
exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from verl_mem1.config import ConfigError, Mem1Config
from verl_mem1.envs import env_spec
from verl_mem1.records import Task, load_tasks
from verl_mem1.training.validation import as_list, cfg_get

if TYPE_CHECKING:
    from omegaconf import DictConfig

SPLITS = ("train", "val")


def compose_split(mem1: Mem1Config, split: str, root: Path) -> Path:
    """Compose ``mem1.objectives``-objective tasks from the split's question source, once, under ``root/data``."""
    from verl_mem1.rollout.configure import tag_set_for
    from verl_mem1.tasks.compose import compose_tasks, write_tasks_parquet
    from verl_mem1.tasks.sources import load_source

    source = mem1.train_source if split == "train" else mem1.val_source
    out = root / "data" / f"{split}-{source.replace(':', '_').replace('/', '_')}-{mem1.objectives}obj.parquet"
    if not out.is_file():
        rows = compose_tasks(
            [load_source(source)],
            objectives=mem1.objectives,
            count=None,
            seed=mem1.seed,
            tags=tag_set_for(mem1),
            max_turns=mem1.max_turns,
            split=split,
        )
        write_tasks_parquet(rows, out)
        print(f"composed {len(rows)} {split} tasks of {mem1.objectives} objective(s) from {source} into {out}")
    return out


def load_split(cfg: DictConfig, mem1: Mem1Config, split: str, *, root: Path, url: str) -> list[Task]:
    """The tasks of ``split`` (``train`` or ``val``); ``url`` is the environment server (WebShop goals live there).

    Raises ``ConfigError`` when the training split has fewer tasks than ``data.train_batch_size``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    limit = cfg_get(cfg, f"data.{split}_max_samples")
    limit = int(limit) if limit is not None and int(limit) > 0 else None
    files = as_list(cfg_get(cfg, f"data.{split}_files"))
    tasks: list[Task] = []
    if not files and env_spec(mem1.env).server_tasks:  # WebShop: the server's goals
        tasks = env_spec(mem1.env).fetch_tasks(url, mem1.train_goals if split == "train" else mem1.val_goals)
    elif not files:
        files = [compose_split(mem1, split, root)]
    for path in files:
        tasks.extend(load_tasks(Path(str(path)).expanduser()))
    tasks = tasks[:limit] if limit else tasks
    batch = int(cfg.data.train_batch_size)
    if split == "train" and len(tasks) < batch:
        raise ConfigError(f"data.train_batch_size={batch}: only {len(tasks)} training tasks")
    return tasks


@dataclass
class BatchSampler:
    """Batches of items (tasks, episode records), epoch after epoch, reshuffled each epoch by ``seed``, resumable."""

    tasks: list[Any]
    batch_size: int
    shuffle: bool = True
    seed: int = 0
    epoch: int = 0
    position: int = 0

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.tasks)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self) -> list[Any]:
        """The next ``batch_size`` tasks; an epoch boundary inside a batch continues into the next epoch."""
        out: list[Any] = []
        while len(out) < self.batch_size:
            order = self._order(self.epoch)
            take = order[self.position : self.position + self.batch_size - len(out)]
            out.extend(self.tasks[i] for i in take)
            self.position += len(take)
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
