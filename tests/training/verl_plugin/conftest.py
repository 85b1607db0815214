"""The verl plug-in on CPU: loading, recipes, the MEM1 agent loop and the MEM1 FSDP engine's input preparation.

verl's whole trainer runs in ``test_main_ppo_on_cpu.py`` (CPU platform, ``mem1_hf`` rollout). The other modules run
verl's own code around ours, piece by piece: its registries,
its Hydra config tree, its agent-loop instantiation, both of its agent-loop post-processing paths (the legacy
``AgentLoopWorker`` and the TransferQueue field layout), its padding helpers and its engine's
``forward_step``/``prepare_model_inputs``/``prepare_model_outputs`` on the tiny model (FSDP wrapping and
``torch.distributed`` are the parts left out). The acceptance check is DESIGN.md's: every generated token's
training log-prob equals the rollout's and the dense packed reference within 1e-4 (fp32).

The fixtures below are session-scoped: one trainer config, one fake rollout server and one played episode for the
agent-loop and engine modules together (as when these tests were one module).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support import FakeServerClient, FakeVllmReplica
from tests.training.verl_plugin.common import TEMPERATURE, compose, make_loop, row_kwargs, verl_sampling_params
from verl_mem1.training.verl_plugin import AGENT_NAME


@pytest.fixture(scope="session")
def trainer_config(tiny_model_dir, retrieval_url):
    return compose(
        "qa",
        [
            f"actor_rollout_ref.model.path={tiny_model_dir}",
            f"mem1.retriever_url={retrieval_url}",
            "mem1.topk=1",
            "mem1.max_turns=3",
            "mem1.max_new_tokens=10",
            "mem1.max_observation_tokens=24",
            "data.max_prompt_length=1024",
            "data.max_response_length=512",
            f"actor_rollout_ref.rollout.temperature={TEMPERATURE}",
        ],
    )


@pytest.fixture(scope="session")
def rows(trainer_config, tiny_backend, tmp_path_factory):
    """Dataset rows exactly as verl's RLHFDataset serves them, from tasks written by ``mem1 compose``'s code."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from verl_mem1.tasks import compose_tasks, load_source, write_tasks_parquet

    items = load_source("hotpotqa-dev")[:4]
    path = write_tasks_parquet(
        compose_tasks([items], objectives=2, count=2, seed=0, agent_name=AGENT_NAME),
        tmp_path_factory.mktemp("tasks") / "train.parquet",
    )
    data = trainer_config.data.copy()
    data.filter_overlong_prompts = False
    dataset = RLHFDataset(data_files=[str(path)], tokenizer=tiny_backend.tokenizer, config=data)
    return [dataset[i] for i in range(len(dataset))]


@pytest.fixture(scope="session")
def server(tiny_backend):
    from verl_mem1.rollout.backends.hf_local import HFLocalBackend

    backend = HFLocalBackend(model=tiny_backend.model, tokenizer=tiny_backend.tokenizer, max_batch_size=8, seed=0)
    return FakeServerClient(FakeVllmReplica(backend))


@pytest.fixture(scope="session")
def episodes(trainer_config, server, tiny_backend, rows):
    """([record], [packed output]) of one MEM1 episode (row 0), played through the agent loop's own steps."""
    from verl_mem1.tasks.rewards import compute_score
    from verl_mem1.training.verl_plugin.agent_loop import trajectory_text

    loop = make_loop(trainer_config, server, tiny_backend.tokenizer)

    async def go():
        out = []
        for row in rows[:1]:
            record = await loop.play(loop.task_from_row(row_kwargs(row)), verl_sampling_params(trainer_config))
            reward, info = await loop.score(record, row_kwargs(row))
            out.append((record, loop.to_outputs(record, reward, info)))
        return out

    played = asyncio.run(go())
    assert all(len(r.turns) >= 2 for r, _ in played), "episodes must span several turns"
    for (record, output), row in zip(played, rows[:1], strict=True):  # in-loop reward = our compute_score on the text
        truth = row["reward_model"]["ground_truth"]
        text = trajectory_text(record, tiny_backend.tokenizer)
        assert output.reward_score == compute_score(row["data_source"], text, truth, row["extra_info"])["score"]
    return [r for r, _ in played], [o for _, o in played]
