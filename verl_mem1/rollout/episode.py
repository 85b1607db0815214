"""The MEM1 episode loop: generate, parse, act, observe — with contexts built from recorded token ids.

Each turn's context comes from the context policy applied to the prompt ids and the ids of earlier turns
(generated ids exactly as sampled, observation ids as appended), so training can later score every token
under exactly the context it was sampled in. Nothing is ever re-tokenized from decoded text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from verl_mem1.protocol import (
    TurnTokens,
    build_prompt_messages,
    format_invalid_observation,
    format_observation,
    get_tag_set,
    parse_context_policy,
    parse_turn,
)
from verl_mem1.rollout.backends.base import LLMBackend, SamplingConfig
from verl_mem1.rollout.environment import Environment, EnvironmentError_
from verl_mem1.rollout.tasks import Task

Termination = Literal["answer", "max_turns", "invalid_action", "context_limit"]
RewardFn = Callable[[str | None, list[list[str]]], float]


def default_max_turns(num_objectives: int) -> int:
    """6 turns by default, 20 for 8 or more objectives (as the paper runs them)."""
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


@dataclass
class TurnRecord:
    index: int
    context_ids: list[int]
    generated_ids: list[int]
    logprobs: list[float]
    text: str
    internal_state: str | None
    action: dict[str, str]  # {"kind", "text", "reason"}
    observation_ids: list[int]
    finish_reason: str
    timings: dict[str, float]


@dataclass
class EpisodeRecord:
    id: str
    data_source: str
    questions: list[str]
    ground_truth: list[list[str]]
    context_policy: str
    tag_set: str
    sampling: dict[str, Any]
    prompt_ids: list[int]
    turns: list[TurnRecord] = field(default_factory=list)
    final_answer: str | None = None
    termination: Termination = "max_turns"
    reward: float | None = None
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeRecord:
        data = dict(data)
        data["turns"] = [TurnRecord(**t) for t in data.get("turns", [])]
        return cls(**data)

    @property
    def peak_tokens(self) -> int:
        """Max over turns of the context length plus the tokens generated that turn."""
        return max((len(t.context_ids) + len(t.generated_ids) for t in self.turns), default=len(self.prompt_ids))


def prompt_ids_for(task: Task, tokenizer, tags: str, max_turns: int | None = None) -> list[int]:
    """Chat-template the task's prompt (built from its questions when the task carries none)."""
    messages = task.prompt_messages or build_prompt_messages(task.questions, get_tag_set(tags), max_turns=max_turns)
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
    """Play one episode to an answer, the turn limit, or (if configured) the first invalid action."""
    tags = get_tag_set(config.tags)
    policy = parse_context_policy(config.context)
    sampling = config.sampling()
    max_turns = config.max_turns or default_max_turns(task.num_objectives)
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
        if action.kind == "answer":
            record.final_answer = action.text
            record.termination = "answer"
        elif turns_left == 0:
            record.termination = "max_turns"
        elif action.kind == "invalid" and config.on_invalid == "end":
            record.termination = "invalid_action"
        elif action.kind == "invalid":
            observation_text = format_invalid_observation(action.reason, turns_left, tags)
        else:
            t1 = time.perf_counter()
            try:
                body = await env.observe(action.text)
            except EnvironmentError_ as exc:
                body = f"The search failed: {exc}"
            env_s = time.perf_counter() - t1
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
                action={"kind": action.kind, "text": action.text, "reason": action.reason},
                observation_ids=observation_ids,
                finish_reason=generation.finish_reason,
                timings={"generate_s": generate_s, "env_s": env_s},
            )
        )
        if observation_text is None:
            break
    record.wall_time_s = time.perf_counter() - started
    if reward_fn is not None:
        record.reward = float(reward_fn(record.final_answer, record.ground_truth))
    return record
