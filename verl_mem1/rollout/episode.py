"""The MEM1 episode loop: generate, parse, act, observe — with contexts built from recorded token ids.

Each turn's context comes from the context policy applied to the prompt ids and the ids of earlier turns
(generated ids exactly as sampled, observation ids as appended), so training can later score every token
under exactly the context it was sampled in. Nothing is ever re-tokenized from decoded text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from verl_mem1.protocol import (
    TurnTokens,
    build_prompt_messages,
    format_invalid_observation,
    format_observation,
    get_tag_set,
    parse_context_policy,
    parse_turn,
)
from verl_mem1.records import EpisodeRecord, Task, TurnRecord
from verl_mem1.rollout.backends.base import LLMBackend, SamplingConfig
from verl_mem1.rollout.environment import Environment, EnvServerError, EpisodeSession
from verl_mem1.tasks.rewards import RewardFn, penalised

WEBSHOP_MAX_TURNS = 15


def default_max_turns(num_objectives: int, tags: str = "paper") -> int:
    """QA: 6 turns, 20 for 8 or more objectives (as the paper runs them); WebShop: 15."""
    if not get_tag_set(tags).answers:
        return WEBSHOP_MAX_TURNS
    return 20 if num_objectives >= 8 else 6


@dataclass
class EpisodeConfig:
    max_turns: int | None = None  # None: default_max_turns(objectives)
    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    context: str = "mem1"  # mem1 | full | window:K
    tags: str = "paper"  # paper | search_r1
    on_invalid: Literal["continue", "end"] = "continue"
    require_state: bool = False
    max_context_tokens: int | None = None  # end the episode before a context grows past this
    max_observation_tokens: int | None = None  # cut longer observation bodies (new text, never generated text)
    invalid_action_penalty: float = 0.0  # subtracted from the reward once per invalid turn

    def __post_init__(self) -> None:
        parse_context_policy(self.context)  # fail at start-up, not mid-run
        get_tag_set(self.tags)
        if self.max_turns is not None and self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if self.on_invalid not in ("continue", "end"):
            raise ValueError(f"on_invalid must be 'continue' or 'end', got {self.on_invalid!r}")
        self.sampling()  # validates the sampling fields

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=get_tag_set(self.tags).stop_strings,
        )


def prompt_messages_for(task: Task, tags: str, max_turns: int | None = None) -> list[dict[str, str]]:
    """The chat messages an episode of ``task`` opens with, stating the turn budget the episode runs with.

    A prompt the task carries is used as it is, unless the project composed it (``mem1 compose`` and ``mem1
    webshop-tasks`` record the ``extra_info.tags`` and ``max_turns`` it was written for; a None is dropped on loading)
    for another budget or tag set: then it is built again from the questions, so teacher trajectories, RL and
    evaluation of one task read the same prompt whichever command set the budget. ``max_turns`` None: the
    environment's default for the task.
    """
    max_turns = max_turns or default_max_turns(task.num_objectives, tags)
    info = task.extra_info
    stale = "tags" in info and (info.get("max_turns") != max_turns or info["tags"] != tags)
    if task.prompt_messages and not stale:
        return task.prompt_messages
    return build_prompt_messages(task.questions, get_tag_set(tags), max_turns=max_turns)


def prompt_ids_for(task: Task, tokenizer, tags: str, max_turns: int | None = None) -> list[int]:
    """Chat-template the prompt ``prompt_messages_for`` gives (the generation prompt appended)."""
    messages = prompt_messages_for(task, tags, max_turns)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


async def run_episode(
    task: Task,
    backend: LLMBackend,
    env: Environment,
    tokenizer,
    config: EpisodeConfig,
    *,
    reward_fn: RewardFn | None = None,
) -> EpisodeRecord:
    """Play one episode to an answer, the environment's end, the turn limit, or (if set) the first invalid action.

    The reward is the environment's when it scores episodes (WebShop: the purchase, 0 without one), else
    ``reward_fn(final answer, ground truth)``; minus ``invalid_action_penalty`` per invalid turn.
    """
    tags = get_tag_set(config.tags)
    policy = parse_context_policy(config.context)
    sampling = config.sampling()
    max_turns = config.max_turns or default_max_turns(task.num_objectives, config.tags)
    started = time.perf_counter()
    record = EpisodeRecord(
        id=task.id,
        data_source=task.data_source,
        questions=task.questions,
        ground_truth=task.ground_truth,
        context_policy=policy.name,
        tag_set=tags.name,
        sampling={"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k},
        prompt_ids=prompt_ids_for(task, tokenizer, config.tags, max_turns),
    )
    try:
        session = await env.open(task)
    except EnvServerError as exc:
        record.termination, record.error = "env_error", str(exc)
        record.wall_time_s = time.perf_counter() - started
        return record
    env_reward = 0.0
    try:
        env_reward = await _play_turns(
            record, session, backend, tokenizer, config, max_turns, last_action_counts=env.rewards_episodes
        )
    finally:
        await session.close()
    record.wall_time_s = time.perf_counter() - started
    if env.rewards_episodes:
        record.reward = env_reward
    elif reward_fn is not None:
        record.reward = float(reward_fn(record.final_answer, record.ground_truth))
    if record.reward is not None:
        record.reward = penalised(record.reward, record, config.invalid_action_penalty)
    return record


async def _play_turns(
    record: EpisodeRecord,
    session: EpisodeSession,
    backend: LLMBackend,
    tokenizer,
    config: EpisodeConfig,
    max_turns: int,
    *,
    last_action_counts: bool,
) -> float:
    """The turns of one episode, appended to ``record``; returns the environment's reward (0 if it gave none).

    ``last_action_counts``: the last turn's action still goes to the environment (a purchase on the last turn
    is scored); otherwise the last turn can only answer.
    """
    tags = get_tag_set(config.tags)
    policy = parse_context_policy(config.context)
    sampling = config.sampling()
    env_reward = 0.0
    for turn_index in range(max_turns):
        history = [TurnTokens(t.generated_ids, t.observation_ids) for t in record.turns]
        context = policy.build(record.prompt_ids, history)
        if config.max_context_tokens is not None and len(context) + 1 > config.max_context_tokens:
            record.termination = "context_limit"
            break
        budget = sampling
        if config.max_context_tokens is not None:
            room = min(sampling.max_new_tokens, config.max_context_tokens - len(context))
            budget = SamplingConfig(room, sampling.temperature, sampling.top_p, sampling.top_k, sampling.stop)
        t0 = time.perf_counter()
        generation = await backend.generate(context, budget)
        generate_s = time.perf_counter() - t0
        text = tokenizer.decode(generation.token_ids, skip_special_tokens=False)
        parsed = parse_turn(text, tags, require_state=config.require_state)
        action = parsed.action
        turns_left = max_turns - turn_index - 1  # turns the model still has after this one
        observation_text, env_s = None, 0.0
        action_record = {"kind": action.kind, "text": action.text, "reason": action.reason}
        if action.kind == "answer":
            record.final_answer = action.text
            record.termination = "answer"
        elif turns_left == 0 and (action.kind == "invalid" or not last_action_counts):
            record.termination = "max_turns"
        elif action.kind == "invalid" and config.on_invalid == "end":
            record.termination = "invalid_action"
        elif action.kind == "invalid":
            observation_text = format_invalid_observation(action.reason, turns_left, tags)
        else:
            t1 = time.perf_counter()
            try:
                step = await session.step(action.text)
            except EnvServerError as exc:  # still failing after the client's retries: the episode cannot go on
                record.termination, record.error = "env_error", str(exc)
                step = None
            env_s = time.perf_counter() - t1
            if step is not None and not step.valid:
                action_record = {"kind": "invalid", "text": action.text, "reason": step.observation.split("\n")[0]}
            if step is None:
                pass  # the turn is recorded without an observation and the episode ends
            elif step.done:
                record.termination = "done"
                env_reward = step.reward or 0.0
            elif turns_left == 0:
                record.termination = "max_turns"
            else:
                body = step.observation
                if config.max_observation_tokens is not None:
                    body_ids = tokenizer.encode(body, add_special_tokens=False)
                    if len(body_ids) > config.max_observation_tokens:
                        body = tokenizer.decode(body_ids[: config.max_observation_tokens]) + " ..."
                observation_text = format_observation(body, turns_left, tags)
        observation_ids: list[int] = []
        if observation_text is not None:
            observation_ids = tokenizer.encode(observation_text, add_special_tokens=False)
        record.turns.append(
            TurnRecord(
                index=turn_index,
                context_ids=context,
                generated_ids=list(generation.token_ids),
                logprobs=list(generation.logprobs),
                text=text,
                internal_state=parsed.internal_state,
                action=action_record,
                observation_ids=observation_ids,
                finish_reason=generation.finish_reason,
                timings={"generate_s": generate_s, "env_s": env_s},
            )
        )
        if observation_text is None:
            break
    return env_reward
