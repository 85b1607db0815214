"""The MEM1 agent loop as verl runs it: instantiated from verl's registry with hydra, on rows from verl's
``RLHFDataset``, against a stand-in for verl's rollout server client decoding with the tiny model. Every generated
token's rollout log-prob equals a plain transformers forward on the context the server saw."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tests.training.verl_plugin.common import (
    TEMPERATURE,
    TOL,
    agent_loop_entries,
    make_loop,
    row_kwargs,
    verl_sampling_params,
)
from verl_mem1.training.verl_plugin import AGENT_NAME
from verl_mem1.training.verl_plugin.fields import POSITION_KEY, SEGMENT_KEY


def _segments(output):
    seg = output.extra_fields[SEGMENT_KEY]
    p = len(output.prompt_ids)
    ids = output.prompt_ids + output.response_ids
    runs, start = [], p
    for i in range(p + 1, len(ids) + 1):
        if i == len(ids) or seg[i] != seg[i - 1]:
            runs.append((start, i))
            start = i
    return ids, runs


def test_agent_loop_run_returns_the_packed_episode(trainer_config, server, tiny_backend, rows, recompute_logprobs):
    from verl.experimental.agent_loop.agent_loop import AgentLoopOutput

    loop = make_loop(trainer_config, server, tiny_backend.tokenizer)
    calls = len(server.calls)
    output = asyncio.run(loop.run(verl_sampling_params(trainer_config), **row_kwargs(rows[1])))
    assert isinstance(output, AgentLoopOutput) and output.num_turns == len(server.calls) - calls >= 2
    assert server.calls[-1][2]["temperature"] == TEMPERATURE and server.calls[-1][2]["logprobs"] is True
    p, n = len(output.prompt_ids), len(output.response_ids)
    assert server.calls[calls][1] == output.prompt_ids  # turn 1 sees exactly the prompt
    assert len(output.response_mask) == len(output.response_logprobs) == n
    pos, seg = output.extra_fields[POSITION_KEY], output.extra_fields[SEGMENT_KEY]
    assert len(pos) == len(seg) == p + n and seg[:p] == [0] * p and pos[:p] == list(range(p))
    ids, runs = _segments(output)
    assert len(runs) == output.num_turns and output.extra_fields["mem1_turns"] == output.num_turns
    generated = 0
    for t, (a, b) in enumerate(runs, start=1):
        assert seg[a:b] == [t] * (b - a) and pos[a:b] == list(range(p, p + b - a))  # positions restart at P
        mask = output.response_mask[a - p : b - p]
        k = mask.index(1)  # context copy first (loss 0), then the generated tokens (loss 1)
        assert mask == [0] * k + [1] * (b - a - k)
        context, gen = ids[:p] + ids[a : a + k], ids[a + k : b]
        assert server.calls[calls + t - 1][1] == context  # the server saw exactly this context that turn
        expected = recompute_logprobs(tiny_backend.model, context, gen, TEMPERATURE)
        got = output.response_logprobs[a + k - p : b - p]
        assert max(abs(x - y) for x, y in zip(got, expected, strict=True)) <= TOL
        generated += len(gen)
    assert sum(output.response_mask) == generated
    # reward: computed in the loop by the configured reward function, on the episode's text
    assert output.reward_score == output.extra_fields["reward_extra_info"]["score"]
    assert isinstance(output.reward_score, float) and output.metrics.generate_sequences > 0
    assert output.extra_fields["mem1_peak_tokens"] > p and output.extra_fields["mem1_truncated_tokens"] == 0


def test_per_turn_layout_returns_one_sample_per_turn(trainer_config, server, tiny_backend, episodes, rows):
    from hydra.errors import InstantiationException
    from omegaconf import OmegaConf

    records, _ = episodes
    loop = make_loop(trainer_config, server, tiny_backend.tokenizer, layout="per_turn")
    outputs = loop.to_outputs(records[0], 1.0, {"score": 1.0})
    assert len(outputs) == len(records[0].turns)
    for out, turn in zip(outputs, records[0].turns, strict=True):
        assert out.prompt_ids == turn.context_ids and out.response_ids == turn.generated_ids
        assert out.response_logprobs == turn.logprobs and out.response_mask == [1] * len(turn.generated_ids)
        assert out.reward_score == 1.0 and POSITION_KEY not in out.extra_fields
    # the entries of agent_loops.yaml, as AgentLoopWorker registers them (name included) and instantiates them
    loops = {e.name: make_loop(trainer_config, server, tiny_backend.tokenizer, entry=e) for e in agent_loop_entries()}
    assert {n: (lp.mem1.context, lp.mem1.layout) for n, lp in loops.items()} == {
        AGENT_NAME: ("mem1", "packed"),
        "mem1_agent_full": ("full", "packed"),
        "mem1_agent_per_turn": ("mem1", "per_turn"),
    }
    legacy = OmegaConf.merge(trainer_config, {"trainer": {"use_v1": False}})
    with pytest.raises(InstantiationException, match="use_v1"):  # hydra wraps the loop's ValueError
        make_loop(legacy, server, tiny_backend.tokenizer, layout="per_turn")
    with pytest.raises(InstantiationException, match="unknown MEM1 agent loop arguments"):
        make_loop(trainer_config, server, tiny_backend.tokenizer, contxt="full")  # a typo in agent_loops.yaml
    shared = OmegaConf.merge(trainer_config, {})
    OmegaConf.set_struct(shared, False)
    shared.mem1.max_new_tokens = None
    loop = make_loop(shared, server, tiny_backend.tokenizer)
    assert loop.episode_config(loop.task_from_row(row_kwargs(rows[0])), {}).max_new_tokens == loop.response_length


def test_the_invalid_action_penalty_applies_to_qa_rewards_in_the_agent_loop(
    trainer_config, server, tiny_backend, episodes, rows
):
    """The loop scores a QA episode after it ends (verl's reward function on its text); the penalty must still land."""
    import copy

    records, _ = episodes
    record = copy.deepcopy(records[0])
    record.final_answer = "; ".join(aliases[0] for aliases in record.ground_truth)  # every objective right
    for turn in record.turns[:2]:
        turn.action = {"kind": "invalid", "text": "", "reason": "no action tag"}
    invalid = record.invalid_turns
    assert invalid >= 2 and len(record.ground_truth) == 2
    row = row_kwargs(rows[0])
    for penalty in (0.0, 0.25):
        loop = make_loop(trainer_config, server, tiny_backend.tokenizer, invalid_action_penalty=penalty)
        reward, info = asyncio.run(loop.score(record, row))
        assert info["answer_score"] == 2.0  # EM summed over the two objectives
        assert reward == info["score"] == 2.0 - penalty * invalid and info["invalid_turns"] == invalid
        output = loop.to_outputs(record, reward, info)
        assert output.reward_score == reward


def test_agent_loop_plays_webshop_rows_and_takes_the_shops_reward(
    trainer_config, server, tiny_backend, webshop_url, tmp_path
):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from env_servers.webshop.data import load_catalog
    from verl_mem1.tasks import write_tasks_parquet
    from verl_mem1.tasks.webshop import webshop_rows

    goals = load_catalog().goals
    path = write_tasks_parquet(
        webshop_rows(goals, range(3, 5), split="train", agent_name=AGENT_NAME), tmp_path / "w.parquet"
    )
    data = trainer_config.data.copy()
    data.filter_overlong_prompts = False
    dataset = RLHFDataset(data_files=[str(path)], tokenizer=tiny_backend.tokenizer, config=data)
    row = row_kwargs(dataset[0])
    loop = make_loop(trainer_config, server, tiny_backend.tokenizer, env="webshop", webshop_url=webshop_url)
    calls = len(server.calls)

    async def go():
        record = await loop.play(loop.task_from_row(row), verl_sampling_params(trainer_config))
        return record, await loop.score(record, row)

    record, (reward, info) = asyncio.run(go())
    assert record.tag_set == "webshop" and record.data_source == "webshop" and record.ground_truth == []
    assert goals[3]["instruction_text"] in tiny_backend.tokenizer.decode(record.prompt_ids)
    assert len(record.turns) == len(server.calls) - calls == 3  # mem1.max_turns=3 in this config
    assert record.termination == "max_turns" and record.reward == reward == 0.0  # a random model buys nothing
    assert info == {"score": 0.0, "webshop_success": 0.0}
    output = loop.to_outputs(record, reward, info)
    assert output.reward_score == 0.0 and output.extra_fields["mem1_turns"] == 3


def test_an_episode_the_environment_failed_raises_instead_of_becoming_a_sample(trainer_config, tiny_backend, rows):
    """verl's v1 worker turns the exception into a failed group: the episode is never trained on."""
    from env_servers.background import free_port
    from tests.support import FakeServerClient, FakeVllmReplica, ScriptedBackend
    from verl_mem1.training.verl_plugin.agent_loop import EnvironmentFailure

    scripted = ScriptedBackend(tiny_backend.model, tiny_backend.tokenizer, ["<IS>x</IS><query>Tulsa</query>"])
    server = FakeServerClient(FakeVllmReplica(scripted))
    dead = f"http://127.0.0.1:{free_port()}"
    loop = make_loop(trainer_config, server, tiny_backend.tokenizer, retriever_url=dead, env_retries=0)
    with pytest.raises(EnvironmentFailure, match="retrieval server unreachable"):
        asyncio.run(loop.run(verl_sampling_params(trainer_config), **row_kwargs(rows[0])))


def test_a_cut_inside_a_context_copy_keeps_the_score_where_gae_sees_it(trainer_config, server, tiny_backend, episodes):
    """verl puts the score on the last response token and its GAE skips untrained ones: a packed episode cut inside
    the second turn's context copy would lose its reward under GAE (checked with verl's own function). The loop ends
    the sample on the first turn's last generated token instead."""
    from verl.trainer.ppo.core_algos import compute_gae_advantage_return

    from verl_mem1.training.layout import pack_episode, truncate

    def gae(response_mask: list[int]):
        mask = torch.tensor([response_mask], dtype=torch.float32)
        rewards = torch.zeros_like(mask)
        rewards[0, -1] = 1.0  # where verl places the episode's score
        _, returns = compute_gae_advantage_return(rewards, torch.zeros_like(mask), mask, gamma=1.0, lam=1.0)
        return returns[mask.bool()]  # (the advantages are these, whitened over the batch)

    record = episodes[0][0]
    full = pack_episode(record)
    p, mask = full.prompt_len, full.loss_mask.tolist()
    first_end = p + mask[p:].index(0, mask[p:].index(1))  # the first turn's last generated token + 1
    cut = first_end + 3  # three tokens into the second turn's context copy
    assert mask[first_end:cut] == [0, 0, 0]
    assert not gae(truncate(full, cut).loss_mask.tolist()[p:]).any()  # a plain cut: the reward vanishes

    loop = make_loop(trainer_config, server, tiny_backend.tokenizer)
    loop.response_length = cut - p
    out = loop.to_outputs(record, 1.0, {"score": 1.0})
    assert len(out.prompt_ids) + len(out.response_ids) == first_end and out.response_mask[-1] == 1
    assert out.extra_fields["mem1_truncated_tokens"] == full.length - first_end
    assert (gae(out.response_mask) == 1.0).all()  # every trained token's return is the score


def test_with_a_rollout_dump_folder_the_loop_logs_each_episode_for_the_viewer(
    trainer_config, server, tiny_backend, rows, tmp_path
):
    """verl dumps decoded text only; under ``trainer.rollout_data_dir`` the loop appends the token-exact record (with
    its reward, the weights' step and the model), which ``mem1 view`` reads."""
    from omegaconf import OmegaConf

    from verl_mem1.viewer.episode import episode_view
    from verl_mem1.viewer.load import load_episodes

    plain = make_loop(trainer_config, server, tiny_backend.tokenizer)
    assert plain.episode_log is None, "no dump folder: nothing is written"
    config = OmegaConf.merge(trainer_config, {"trainer": {"rollout_data_dir": str(tmp_path / "rollouts")}})
    loop = make_loop(config, server, tiny_backend.tokenizer)
    outputs = [asyncio.run(loop.run(verl_sampling_params(config), **row_kwargs(row))) for row in rows[:2]]
    loaded = load_episodes([tmp_path / "rollouts"])
    assert [e.record.id for e in loaded] == [loop.task_from_row(row_kwargs(r)).id for r in rows[:2]]
    assert [e.record.reward for e in loaded] == [o.reward_score for o in outputs]
    assert [len(e.record.turns) for e in loaded] == [o.num_turns for o in outputs]
    assert {e.model for e in loaded} == {str(config.actor_rollout_ref.model.path)}
    assert [e.step for e in loaded] == [o.extra_fields["max_global_steps"] for o in outputs]
    view = episode_view(loaded[0], tiny_backend.tokenizer, key=0)
    assert all(t["context_matches"] for t in view["turns"]), "the logged contexts are the ones the rule built"
