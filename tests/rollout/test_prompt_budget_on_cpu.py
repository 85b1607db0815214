"""One task, one prompt: the scripted teacher (SFT data), the verl agent loop (RL) and evaluation open an episode
of a task with the same prompt ids, and that prompt states the turn budget the episode runs with."""

from __future__ import annotations

import asyncio

import pytest

from verl_mem1.config import Mem1Config
from verl_mem1.records import task_from_mapping
from verl_mem1.rollout.backends.oracle import run_oracle_episodes
from verl_mem1.rollout.configure import episode_config, make_environment
from verl_mem1.rollout.episode import prompt_messages_for, run_episode
from verl_mem1.tasks.compose import compose_tasks
from verl_mem1.tasks.sources import load_source


def _task(max_turns: int | None, objectives: int = 2):
    (row,) = compose_tasks([load_source("hotpotqa-train")], objectives=objectives, count=1, seed=0, max_turns=max_turns)
    return task_from_mapping(row, "composed", 0)


def _content(messages) -> str:
    return "\n".join(m["content"] for m in messages)


@pytest.mark.parametrize(("composed", "run", "stated"), [(None, None, 6), (None, 4, 4), (5, None, 5), (5, 3, 3)])
def test_the_prompt_states_the_budget_the_episode_runs_with(composed, run, stated):
    task = _task(composed)
    config = episode_config(Mem1Config(max_turns=run, max_new_tokens=8), task)
    assert (config.max_turns or 6) == stated  # a run's budget, else the task's, else the default
    text = _content(prompt_messages_for(task, config.tags, config.max_turns))
    assert f"at most {stated} turns" in text
    assert not any(f"at most {n} turns" in text for n in range(1, 21) if n != stated)
    if composed == stated:
        assert prompt_messages_for(task, config.tags, config.max_turns) is task.prompt_messages  # kept as written


def test_a_prompt_the_project_did_not_compose_is_kept():
    task = _task(None)
    del task.extra_info["tags"]
    task.prompt_messages = [{"role": "user", "content": "my own wording"}]
    assert prompt_messages_for(task, "paper", 4) == task.prompt_messages


def test_teacher_rl_and_eval_episodes_open_with_the_same_prompt(tiny_backend, retrieval_url):
    task = _task(None)
    tokenizer = tiny_backend.tokenizer
    mem1 = Mem1Config(retriever_url=retrieval_url, max_new_tokens=8)
    config = episode_config(mem1, task)

    async def play():
        env = make_environment(mem1)
        try:
            (teacher,) = await run_oracle_episodes([task], env, tokenizer, config, progress=False)
            model = await run_episode(task, tiny_backend, env, tokenizer, config)
        finally:
            await env.aclose()
        return teacher, model

    teacher, model = asyncio.run(play())
    assert teacher.prompt_ids == model.prompt_ids
    assert "at most 6 turns" in tokenizer.decode(teacher.prompt_ids)
