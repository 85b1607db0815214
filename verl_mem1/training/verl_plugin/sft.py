"""MEM1 episode records on verl's own SFT trainer (``verl.trainer.sft_trainer.SFTTrainer``) with the MEM1 engine.

verl's engine-based SFT trainer builds its policy engine through ``EngineRegistry`` (the plug-in's MEM1 engine) and
takes any dataset class named in ``data.custom_cls``. ``MEM1EpisodeSFTDataset`` yields one packed episode per sample
(``layout.pack_episode``, as RL packs it) with the per-sample MEM1 fields the engine reads (``fields.py``); verl's
``sft_loss`` then averages ``-log p`` over the ``loss_mask`` tokens (the generated ones) of the whole step: the same
loss as the project's own SFT (``training/sft.py``), checked token for token in
``tests/training/verl_plugin/test_sft_on_cpu.py``. Recipe: ``recipes/verl_sft.yaml``.
"""

from __future__ import annotations

import os
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


def run_single_process(cfg: Any) -> None:
    """verl's ``run_sft`` in this process (one rank), on CPU or one GPU: verl's own process-group set-up asks for
    ``cpu:gloo,cpu:gloo`` on the CPU platform, which torch refuses (a duplicate device type)."""
    import torch.distributed as dist

    if str(cfg.trainer.device) == "cpu":  # before verl's modules resolve the platform (once per process)
        os.environ.setdefault("VERL_PLATFORM", "cpu")
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


def main() -> None:
    """``python -m verl_mem1.training.verl_plugin.sft data.train_files=[E.jsonl] model.path=DIR ...`` (Hydra overrides
    on ``recipes/verl_sft.yaml``)."""
    import hydra

    hydra.main(config_path="../../recipes", config_name="verl_sft", version_base=None)(run_single_process)()


if __name__ == "__main__":
    main()
