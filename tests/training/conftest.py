"""Real MEM1 episodes (tiny model, real retrieval server) and a separate copy of the model to train with."""

from __future__ import annotations

import asyncio

import pytest

POLICIES = ("mem1", "full", "window:2")
TEMPERATURES = (1.0, 0.7)
MAX_TURNS = 8
QUESTIONS = [
    ("hp1", "Which city hosted the band Tinted Windows' first performance?", ["Tulsa"]),
    ("hp2", "Who wrote the novel that the film Stardust is based on?", ["Neil Gaiman"]),
]


@pytest.fixture(scope="session")
def training_model(tiny_model_dir):
    """The tiny model loaded again: training must not share (or switch the attention of) the rollout's object."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def episodes_by_config(tiny_backend, retrieval_url, tmp_path_factory):
    """{(policy, temperature): (records read back from JSONL, path)} for every policy and temperature."""
    from verl_mem1.records import Task
    from verl_mem1.rollout.environment import RetrievalEnvironment
    from verl_mem1.rollout.episode import EpisodeConfig
    from verl_mem1.rollout.runner import read_episodes, run_episodes, write_episodes

    tasks = [Task(id=i, questions=[q], ground_truth=[a]) for i, q, a in QUESTIONS]
    configs = [(policy, temperature) for policy in POLICIES for temperature in TEMPERATURES]

    async def go():
        env = RetrievalEnvironment(retrieval_url)
        try:  # all configurations at once, so the local backend decodes them in shared batches
            return await asyncio.gather(
                *(
                    run_episodes(
                        tasks,
                        tiny_backend,
                        env,
                        tiny_backend.tokenizer,
                        EpisodeConfig(max_turns=MAX_TURNS, max_new_tokens=12, temperature=t, context=p),
                        progress=False,
                    )
                    for p, t in configs
                )
            )
        finally:
            await env.aclose()

    root = tmp_path_factory.mktemp("training-episodes")
    out = {}
    for (policy, temperature), records in zip(configs, asyncio.run(go()), strict=True):
        path = root / f"{policy.replace(':', '')}-{temperature}.jsonl"
        write_episodes(path, records)
        out[(policy, temperature)] = (read_episodes(path), path)
    return out
