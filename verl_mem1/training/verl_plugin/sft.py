"""``mem1 sft``: MEM1 episode records on verl's own SFT trainer (``verl.trainer.sft_trainer.SFTTrainer``) with the
MEM1 engine.

verl's engine-based SFT trainer builds its policy engine through ``EngineRegistry`` (the plug-in's MEM1 engine) and
takes any dataset class named in ``data.custom_cls``. ``MEM1EpisodeSFTDataset`` yields one packed episode per sample
(``layout.pack_episode``, as RL packs it) with the per-sample MEM1 fields the engine reads (``fields.py``); verl's
``sft_loss`` then averages ``-log p`` over the ``loss_mask`` tokens (the generated ones) of the whole step, which
``tests/training/verl_plugin/test_sft_on_cpu.py`` checks against ``training/sft.py``'s ``sft_nll``. What verl's
trainer lacks, ``prepare`` adds before it starts: a seeded validation split written as files, and checks that fail at
start-up (no episodes, fewer than a batch, a batch that micro-batches do not divide, an unknown attention
backend). Recipe: ``recipes/sft.yaml``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from verl_mem1.training.layout import pack_episode
from verl_mem1.training.verl_plugin.fields import ATTENTION_KEY, POSITION_KEY, SEGMENT_KEY


class MEM1EpisodeSFTDataset(Dataset):
    """Episode records (JSONL: ``mem1 rollout`` / ``eval`` / ``trajectories``) as verl SFT samples, one packed episode
    each. Built by verl as ``cls(parquet_files=, tokenizer=, config=data_config, processor=, max_samples=)``;
    reads ``data.min_reward`` (keep episodes that scored at least that) and ``data.mem1_attention`` (the packed
    attention backend, as ``mem1.attention``: verl hands a dataset only its ``data`` section)."""

    def __init__(self, parquet_files: Any, tokenizer: Any, config: Any, processor: Any = None, max_samples: int = -1):
        from verl_mem1.training.sft import load_episodes
        from verl_mem1.training.verl_plugin.fields import ENGINE_VENDOR, ENGINE_VENDOR_ENV

        if os.environ.get(ENGINE_VENDOR_ENV) != ENGINE_VENDOR:  # verl builds its engine after its datasets
            raise ValueError(
                f"MEM1 episodes need the MEM1 engine, which verl builds when {ENGINE_VENDOR_ENV}={ENGINE_VENDOR} (got "
                f"{os.environ.get(ENGINE_VENDOR_ENV)!r}); a stock engine would train the packed episodes under plain "
                f"causal attention. `mem1 sft` sets it; for torchrun, export {ENGINE_VENDOR_ENV}={ENGINE_VENDOR}"
            )
        self.records = load_episodes(parquet_files, min_reward=config.get("min_reward"))
        if max_samples is not None and max_samples > 0:
            self.records = self.records[:max_samples]
        self.attention = str(config.get("mem1_attention") or "auto")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Returns: ``input_ids``/``position_ids``/``loss_mask`` (1-D long tensors of the packed length, nested by
        verl's collator) and the MEM1 fields as lists (carried to the engine as non-tensor columns)."""
        sample = pack_episode(self.records[index])
        return {
            "input_ids": sample.input_ids.long(),
            "position_ids": sample.position_ids.long(),
            "loss_mask": sample.loss_mask.long(),
            POSITION_KEY: sample.position_ids.tolist(),
            SEGMENT_KEY: sample.segment_ids.tolist(),
            ATTENTION_KEY: self.attention,
        }


def prepare(cfg: Any) -> None:
    """Check ``cfg`` and complete it for verl's trainer, in place: ``data.val_fraction`` becomes a seeded split written
    to ``trainer.default_local_dir/data/{train,val}.jsonl``, ``mem1.attention`` reaches the dataset, and without a
    validation set ``trainer.test_freq`` is -1. Raises ``ConfigError`` before anything is written."""
    from omegaconf import open_dict

    from verl_mem1.config import ConfigError
    from verl_mem1.rollout.runner import write_episodes
    from verl_mem1.training.attention import attention_backend
    from verl_mem1.training.sft import load_episodes, split_episodes

    data, trainer = cfg.data, cfg.trainer
    attention = str(cfg.get("mem1", {}).get("attention") or "auto")
    attention_backend(attention, str(trainer.device))  # an unknown name fails here
    min_reward = data.get("min_reward")
    episodes = load_episodes(data.train_files, min_reward=min_reward)
    if data.get("val_files"):
        train, val = episodes, load_episodes(data.val_files, min_reward=min_reward)
    else:
        train, val = split_episodes(episodes, float(data.get("val_fraction") or 0.0), int(trainer.seed))
    batch, micro = int(data.train_batch_size), int(data.get("micro_batch_size_per_gpu") or data.train_batch_size)
    if not data.get("use_dynamic_bsz") and batch % micro:  # verl asserts it at the first step
        raise ConfigError(f"data.train_batch_size={batch} is not a multiple of data.micro_batch_size_per_gpu={micro}")
    if len(train) < batch:
        raise ConfigError(f"data.train_batch_size={batch}: only {len(train)} training episodes")
    if val and len(val) < batch:  # verl's validation loader drops a partial batch: no validation at all
        raise ConfigError(
            f"{len(val)} validation episodes, fewer than data.train_batch_size={batch}: "
            "raise data.val_fraction or give data.val_files"
        )
    with open_dict(cfg):
        if not data.get("val_files") and val:
            root = Path(str(trainer.default_local_dir)).expanduser() / "data"
            root.mkdir(parents=True, exist_ok=True)
            write_episodes(root / "train.jsonl", train)
            write_episodes(root / "val.jsonl", val)
            data.train_files, data.val_files, data.min_reward = (
                [str(root / "train.jsonl")],
                [str(root / "val.jsonl")],
                None,
            )
        elif not val:
            data.val_files, trainer.test_freq = None, -1
        data.mem1_attention = attention


def run_single_process(cfg: Any) -> None:
    """verl's ``run_sft`` in this process (one rank), on CPU or one GPU: verl's own process-group set-up asks for
    ``cpu:gloo,cpu:gloo`` on the CPU platform, which torch refuses (a duplicate device type)."""
    import torch.distributed as dist

    from verl_mem1.training.verl_plugin.fields import ENGINE_VENDOR, ENGINE_VENDOR_ENV

    if str(cfg.trainer.device) == "cpu":  # before verl's modules resolve the platform (once per process)
        os.environ.setdefault("VERL_PLATFORM", "cpu")
    os.environ[ENGINE_VENDOR_ENV] = ENGINE_VENDOR  # verl's EngineRegistry builds the MEM1 engine
    from verl.trainer.sft_trainer import SFTTrainer

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    backend = "gloo" if str(cfg.trainer.device) == "cpu" or not torch.cuda.is_available() else "nccl"
    dist.init_process_group(backend)
    try:
        SFTTrainer(config=cfg).fit()
    finally:
        dist.destroy_process_group()


RECIPE = "sft"  # recipes/sft.yaml


def checkpoint_dir(cfg: Any, step: int) -> Path:
    """The Hugging Face folder of ``global_step_{step}`` (what ``mem1 eval`` loads)."""
    return Path(str(cfg.trainer.default_local_dir)).expanduser() / f"global_step_{step}" / "huggingface"


def train_sft(cfg: Any, *, progress: bool = True) -> None:
    """``mem1 sft``'s work: check and complete ``cfg`` (``prepare``: failures before anything is written), then train
    in a child process (``launch``)."""
    prepare(cfg)
    print(f"SFT with verl's trainer on {list(cfg.data.train_files)}, from {cfg.model.path}", flush=True)
    launch(cfg, progress=progress)
    print(f"done; checkpoints in {cfg.trainer.default_local_dir} (global_step_N/huggingface)")


def launch(cfg: Any, *, progress: bool = True) -> None:
    """``run_single_process`` in a fresh interpreter, which this one waits for: verl resolves its platform once per
    process and its trainer owns a process group, so neither leaks into the caller (a test session, ``mem1 demo``).
    Raises ``RuntimeError`` when the trainer fails (its output went to this process's stdout/stderr)."""
    from omegaconf import OmegaConf

    env = dict(os.environ)
    if str(cfg.trainer.device) == "cpu":
        env["VERL_PLATFORM"] = "cpu"
    if not progress:
        env["TQDM_DISABLE"] = "1"  # verl's own progress bar
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sft.yaml"
        OmegaConf.save(cfg, path, resolve=True)
        code = subprocess.run([sys.executable, "-m", __name__, str(path)], env=env).returncode
    if code:
        raise RuntimeError(f"verl's SFT trainer exited with status {code}")


if __name__ == "__main__":
    from omegaconf import OmegaConf

    run_single_process(OmegaConf.load(sys.argv[1]))
