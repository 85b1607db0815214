"""From a ``Mem1Config`` to what the episode loop runs: the one place an ``EpisodeConfig`` and an environment client
are built, for the verl agent loop and the rollout/eval commands alike.

Precedence, the same everywhere: an explicit ``mem1.*`` value, else the task's own (``extra_info.tags`` /
``extra_info.max_turns``, written by ``mem1 compose``), else the environment's default.
"""

from __future__ import annotations

from verl_mem1.config import AUTO, Mem1Config
from verl_mem1.envs import env_spec
from verl_mem1.records import Task
from verl_mem1.rollout.environment import Environment
from verl_mem1.rollout.episode import EpisodeConfig


def tag_set_for(mem1: Mem1Config, task: Task | None = None) -> str:
    """``mem1.tags``, else the task's ``extra_info.tags``, else the environment's (``envs.py``: ``paper`` for QA,
    ``webshop`` for WebShop)."""
    if mem1.tags:
        return str(mem1.tags)
    if task is not None and task.extra_info.get("tags"):
        return str(task.extra_info["tags"])
    return env_spec(mem1.env).tags


def episode_config(
    mem1: Mem1Config,
    task: Task | None = None,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = -1,
    max_new_tokens: int | None = None,
    max_context_tokens: int | None = None,
) -> EpisodeConfig:
    """The episode settings for ``task`` (or for tasks without their own tags/turn budget).

    Args:
        mem1: the run's MEM1 settings.
        task: the task about to be played; its ``extra_info`` fills what ``mem1`` leaves unset.
        temperature, top_p, top_k: the sampling of this rollout (greedy validation passes temperature 0).
        max_new_tokens: per turn when ``mem1.max_new_tokens`` is unset (verl's ``rollout.response_length``).
        max_context_tokens: when ``mem1.max_context_tokens`` is unset (verl: prompt + response length).
    """
    max_turns = mem1.max_turns
    if max_turns is None and task is not None and task.extra_info.get("max_turns"):
        max_turns = int(task.extra_info["max_turns"])
    per_turn = mem1.max_new_tokens or max_new_tokens
    if per_turn is None:
        raise ValueError("mem1.max_new_tokens is unset and no default per-turn budget was given")
    return EpisodeConfig(
        max_turns=max_turns,
        max_new_tokens=int(per_turn),
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k) if int(top_k) > 0 else -1,
        context=mem1.context,
        tags=tag_set_for(mem1, task),
        on_invalid=mem1.on_invalid,
        require_state=mem1.require_state,
        max_context_tokens=mem1.max_context_tokens or max_context_tokens,
        max_observation_tokens=mem1.max_observation_tokens,
        invalid_action_penalty=float(mem1.invalid_action_penalty),
    )


def make_environment(mem1: Mem1Config, url: str | None = None) -> Environment:
    """The environment client ``mem1`` names (``url`` replaces an ``auto`` URL once a bundled server runs)."""
    spec = env_spec(mem1.env)
    url = url or mem1.url()
    if url == AUTO:
        raise ValueError(
            f"mem1.{spec.url_key}=auto: the bundled server is started by single-machine runs only (mem1 train, "
            "rollout, eval); give the URL of a running server"
        )
    return spec.client_class().from_config(url, mem1)
