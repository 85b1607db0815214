"""``mem1 sft`` on verl's own SFT trainer (``verl_plugin/sft.py``, ``recipes/sft.yaml``): verl's ``SFTTrainer``
builds the MEM1 engine through its registry, and its first loss is the project's packed SFT loss."""

from __future__ import annotations

import re

import torch

from tests.training.records import mem1_record
from verl_mem1.rollout.runner import write_episodes

STEP_LOSS = re.compile(r"step:(\d+) - .*?train/loss:([0-9.eE+-]+)")


def test_verl_sft_trainer_trains_mem1_episodes_with_the_packed_loss_on_cpu(tiny_model_dir, tmp_path, capfd):
    from transformers import AutoModelForCausalLM

    from verl_mem1.cli import main
    from verl_mem1.training.layout import pack_episode
    from verl_mem1.training.sft import sft_nll

    records = [mem1_record(24, turns=3, gen_len=6, obs_len=5, seed=seed) for seed in range(4)]
    episodes = tmp_path / "episodes.jsonl"
    write_episodes(episodes, records)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        sums = [sft_nll(model, pack_episode(r), backend="dense") for r in records]
    expected = sum(s for s, _ in sums) / sum(n for _, n in sums)  # -log p averaged over every generated token

    run = tmp_path / "run"
    args = [f"data.train_files=[{episodes}]", "data.val_fraction=0", f"model.path={tiny_model_dir}"]
    args += ["data.train_batch_size=4", "trainer.total_training_steps=2", "trainer.save_freq=2", "optim.lr=1e-3"]
    args += ["optim.lr_warmup_steps_ratio=0", f"trainer.default_local_dir={run}", "trainer.resume_mode=disable"]
    assert main(["sft", "--no-progress", *args]) == 0  # ~20 s on a 2-core Xeon (Ice Lake)
    log = capfd.readouterr().out  # the trainer's child process writes to this process's stdout
    losses = {int(step): float(loss) for step, loss in STEP_LOSS.findall(log)}
    assert sorted(losses) == [1, 2], log[-4000:]
    # step 1 covers all four episodes with the initial weights: the MEM1 rule, not a plain causal reading of the row
    assert abs(losses[1] - expected) <= 1e-4, (losses, expected)
    assert losses[2] < losses[1]
    tuned = AutoModelForCausalLM.from_pretrained(run / "global_step_2" / "huggingface", dtype=torch.float32)
    moved = max((a - b).abs().max().item() for a, b in zip(tuned.parameters(), model.parameters(), strict=True))
    assert moved > 0  # the exported Hugging Face folder holds the trained weights


def test_the_episode_dataset_refuses_to_reach_a_stock_engine(tmp_path, monkeypatch):
    """verl builds its SFT engine after its datasets: run by hand without VERL_ENGINE_VENDOR=mem1 (a torchrun of verl's
    trainer on recipes/sft.yaml), the stock engine would train packed episodes as plain causal rows; the dataset
    stops it first."""
    import pytest
    from omegaconf import OmegaConf

    from verl_mem1.training.verl_plugin.sft import MEM1EpisodeSFTDataset

    episodes = tmp_path / "episodes.jsonl"
    write_episodes(episodes, [mem1_record(24, turns=2, gen_len=4, obs_len=3, seed=0)])
    config = OmegaConf.create({"min_reward": None, "mem1_attention": "auto"})
    monkeypatch.delenv("VERL_ENGINE_VENDOR", raising=False)
    with pytest.raises(ValueError, match="export VERL_ENGINE_VENDOR=mem1"):
        MEM1EpisodeSFTDataset([str(episodes)], tokenizer=None, config=config)
    monkeypatch.setenv("VERL_ENGINE_VENDOR", "mem1")
    assert len(MEM1EpisodeSFTDataset([str(episodes)], tokenizer=None, config=config)) == 1
