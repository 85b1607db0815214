"""A scripted teacher for supervised fine-tuning: an ``LLMBackend`` that plays composed QA tasks perfectly.

``OracleBackend`` knows every task's questions and gold answers. Episodes still run through the real episode loop
(``run_episode``/``run_episodes``), so prompts, contexts, observations and hints are built by the project's own
code and the records are ordinary, token-exact MEM1 episode records, the same JSONL ``mem1 rollout`` writes.

Policy, for a task with questions ``q_1 … q_n`` (the tags are the episode's tag set, paper or search_r1)::

    turn k < n   <IS>Q1 answer: a_1. … Qk answer: a_k. Q(k+1): not yet found. … Next: search Q(k+1).</IS>
                 <query>q_(k+1)</query>
    turn n       <IS>Q1 answer: a_1. … Qn answer: a_n. All questions answered.</IS><answer>a_1; …; a_n</answer>

``a_i`` is the first alias of question i that the results of its own query contain (after the answer
normalisation of ``tasks.rewards``), else its first alias.

The backend keeps no per-episode state, so any number of episodes can run at once: each call reads everything
from the context it is given. The prompt ids identify the task (the oracle computes every task's prompt as
``run_episode`` does, from the same episode settings); the last turn in the context that queried one of the
task's questions says how far the episode got, its ``<IS>`` holds the answers chosen so far (the state is the
oracle's only memory, as for a MEM1 agent), and the observation after it holds that question's results.

A turn's ids are ``tokenizer.encode(text, add_special_tokens=False)``. No end-of-turn token is added: the episode
loop stops a model at the closing action tag (the tag set's ``stop_strings``) and appends the observation right
after it, so a turn of a sampled model ends exactly there too. Log-probs are 0.0 (there is no model); each
``Generation`` carries ``extra={"oracle": True}`` and :func:`run_oracle_episodes` sets ``sampling["oracle"] = True``
on every record, so nobody mistakes them for a model's log-probs.

:func:`grounded_objectives` is the grounding filter: an answer counts only when one of its aliases appears in the
results its own query returned, so a student trained on kept episodes learns to extract answers, not recall them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from verl_mem1.protocol import TagSet, get_tag_set, parse_turn
from verl_mem1.records import EpisodeRecord, Task
from verl_mem1.rollout.backends.base import Generation, SamplingConfig
from verl_mem1.rollout.episode import EpisodeConfig, default_max_turns, prompt_ids_for
from verl_mem1.rollout.runner import run_episodes
from verl_mem1.tasks.rewards import RewardFn, answer_reward, normalize_answer

__all__ = [
    "ORACLE_MARK",
    "OracleBackend",
    "PromptIndex",
    "answer_in_text",
    "grounded_objectives",
    "observation_body",
    "oracle_reward",
    "run_oracle_episodes",
    "scripted_generation",
    "split_turns",
    "worth_imitating",
]

ORACLE_MARK = "oracle"  # key set to True in Generation.extra and in EpisodeRecord.sampling
HINT_OPEN = "[HINT]"  # protocol.hint: an observation's first line is the turns-left hint


def answer_in_text(alias: str, text: str) -> bool:
    """True when the normalised alias occurs in the normalised text as whole words (``tasks.rewards``'
    ``normalize_answer``: case, ASCII punctuation, articles and spacing do not matter)."""
    needle = normalize_answer(alias)
    return bool(needle) and f" {needle} " in f" {normalize_answer(text)} "


def observation_body(text: str, tags: TagSet) -> str:
    """The retrieved text of one observation block: what lies inside its info tags, without the hint line."""
    open_tag, close_tag = tags.open(tags.info), tags.close(tags.info)
    start = text.find(open_tag)
    inner = text[start + len(open_tag) :] if start != -1 else text
    end = inner.rfind(close_tag)
    inner = inner[:end] if end != -1 else inner
    hint, newline, body = inner.partition("\n")
    return body if newline and hint.startswith(HINT_OPEN) else inner


def _pick_alias(aliases: Sequence[str], retrieved: str) -> str:
    """The first alias the retrieved text contains, else the first alias."""
    return next((a for a in aliases if answer_in_text(a, retrieved)), aliases[0])


@dataclass(frozen=True)
class _Entry:
    task: Task
    tags: TagSet
    questions: tuple[str, ...]  # stripped, as the parser returns a query


def _state_text(entry: _Entry, answers: Sequence[str]) -> str:
    """The internal state after ``len(answers)`` questions were searched: every answer so far, then what's next."""
    n, k = len(entry.questions), len(answers)
    parts = [f"Q{i + 1} answer: {a}." for i, a in enumerate(answers)]
    parts += [f"Q{i + 1}: not yet found." for i in range(k, n)]
    parts.append(f"Next: search Q{k + 1}." if k < n else "All questions answered.")
    return " ".join(parts)


def _answers_in_state(entry: _Entry, state: str, count: int) -> list[str]:
    """Read back the answers the oracle wrote into its state for the first ``count`` questions."""
    answers = []
    for i in range(count):
        aliases = entry.task.ground_truth[i]
        written = [a for a in sorted(aliases, key=len, reverse=True) if f"Q{i + 1} answer: {a}." in state]
        answers.append(written[0] if written else aliases[0])
    return answers


class PromptIndex:
    """Which task a context belongs to: a scripted teacher knows every task's prompt ids (built as ``run_episode``
    builds them, from the same settings), and every context the episode loop sends starts with one of them."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, ...], Any] = {}
        self._lengths: list[int] = []

    def add(self, prompt_ids: Sequence[int], entry: Any) -> Any:
        """Register ``entry`` under ``prompt_ids``; returns the entry already there for the same prompt, if any."""
        key = tuple(int(i) for i in prompt_ids)
        known = self._entries.setdefault(key, entry)
        if len(key) not in self._lengths:
            self._lengths = sorted([*self._lengths, len(key)], reverse=True)
        return known

    def match(self, context: Sequence[int]) -> tuple[Any, int]:
        """The entry whose prompt ``context`` starts with, and that prompt's length; ``LookupError`` when none."""
        for length in self._lengths:
            entry = self._entries.get(tuple(context[:length]))
            if entry is not None:
                return entry, length
        raise LookupError(
            "the context starts with none of the oracle's task prompts (build the oracle with the tasks, "
            "tokenizer and episode settings the episodes run with)"
        )


def split_turns(tail: str, tags: TagSet) -> list[tuple[str, str]]:
    """``(generated text, observation block)`` of every turn in the text after the prompt, in context order."""
    open_tag, close_tag = tags.open(tags.info), tags.close(tags.info)
    turns: list[tuple[str, str]] = []
    pos = 0
    while (start := tail.find(open_tag, pos)) != -1:
        end = tail.find(close_tag, start)
        end = len(tail) if end == -1 else end + len(close_tag)
        turns.append((tail[pos:start], tail[start:end]))
        pos = end
    return turns


class OracleBackend:
    """Plays each task's questions in order and answers with the gold answers (see the module docstring).

    Args:
        tasks: the tasks the episodes will play (QA tasks with questions and one alias list per question).
        tokenizer: the tokenizer of the student model (its chat template makes the prompts).
        config: the episode settings, one for every task or a function of the task, exactly as given to
            ``run_episodes``: the oracle needs the same tag set and turn budget to recognise a task's prompt.

    Raises ``ValueError`` for a task it cannot play: no questions, answers missing, a tag set without answers, or
    a turn budget smaller than its questions plus the answer; also for two tasks with one prompt but different
    answers. ``generate`` raises ``LookupError`` for a context that starts with none of the tasks' prompts.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        tokenizer,
        config: EpisodeConfig | Callable[[Task], EpisodeConfig],
    ):
        self.tokenizer = tokenizer
        self._prompts = PromptIndex()
        for task in tasks:
            settings = config(task) if callable(config) else config
            tags = get_tag_set(settings.tags)
            n = task.num_objectives
            if not tags.answers:
                raise ValueError(f"task {task.id!r}: tag set {tags.name!r} has no answers; the oracle plays QA tasks")
            if n == 0:
                raise ValueError(f"task {task.id!r}: no questions (the oracle needs them to search)")
            if len(task.ground_truth) != n or not all(task.ground_truth):
                raise ValueError(f"task {task.id!r}: needs one non-empty alias list per question")
            max_turns = settings.max_turns or default_max_turns(n, settings.tags)
            if max_turns < n + 1:
                raise ValueError(
                    f"task {task.id!r}: {n} questions need {n + 1} turns (one search each, then the answer), "
                    f"but the turn budget is {max_turns}"
                )
            entry = _Entry(task, tags, tuple(q.strip() for q in task.questions))
            known = self._prompts.add(prompt_ids_for(task, tokenizer, settings.tags, max_turns), entry)
            if known.task.ground_truth != task.ground_truth:
                raise ValueError(f"tasks {known.task.id!r} and {task.id!r} have the same prompt but different answers")

    def _progress(self, entry: _Entry, tail: str) -> list[str]:
        """The answers chosen so far: one per question already searched, read from the latest turn in ``tail``
        that searched one of the task's questions (its state and the results of its query)."""
        tags = entry.tags
        for generated, observation in reversed(split_turns(tail, tags)):
            parsed = parse_turn(generated, tags)
            if parsed.action.kind != "query" or parsed.action.text not in entry.questions:
                continue  # not one of the oracle's searches (e.g. a turn cut by max_new_tokens)
            j = entry.questions.index(parsed.action.text)
            answers = _answers_in_state(entry, parsed.internal_state or "", j)
            answers.append(_pick_alias(entry.task.ground_truth[j], observation_body(observation, tags)))
            return answers
        return []

    def turn_text(self, context: list[int]) -> str:
        """What the oracle writes after ``context``."""
        entry, prompt_len = self._prompts.match(context)
        tail = self.tokenizer.decode(context[prompt_len:], skip_special_tokens=False) if context[prompt_len:] else ""
        answers = self._progress(entry, tail)
        tags = entry.tags
        k = len(answers)
        if k < len(entry.questions):
            action = f"{tags.open(tags.query)}{entry.questions[k]}{tags.close(tags.query)}"
        else:
            action = f"{tags.open(tags.answer)}{'; '.join(answers)}{tags.close(tags.answer)}"
        return f"{tags.open(tags.state)}{_state_text(entry, answers)}{tags.close(tags.state)}{action}"

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        return scripted_generation(self.tokenizer, self.turn_text(list(prompt_ids)), sampling)


def scripted_generation(tokenizer, text: str, sampling: SamplingConfig) -> Generation:
    """A teacher's turn as a ``Generation``: the text's ids (cut at ``max_new_tokens``), log-probs 0, marked."""
    ids = [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]
    finish = "stop"
    if len(ids) > sampling.max_new_tokens:
        ids, finish = ids[: sampling.max_new_tokens], "length"
    return Generation(ids, [0.0] * len(ids), finish, extra={ORACLE_MARK: True})


oracle_reward = answer_reward("em", "mean")  # exact match averaged over objectives: 1.0 when every answer is right


def worth_imitating(record: EpisodeRecord, tokenizer, *, keep_ungrounded: bool = False) -> bool:
    """An oracle episode a student should learn from: right (reward 1.0) and, unless ``keep_ungrounded``, every
    answer found in its own question's search results (:func:`grounded_objectives`)."""
    return record.reward == 1.0 and (keep_ungrounded or all(grounded_objectives(record, tokenizer)))


def grounded_objectives(record: EpisodeRecord, tokenizer) -> list[bool]:
    """Per question: did the results of a search for exactly that question contain one of its aliases?

    Only the observations of turns whose query is the question's text count (their retrieved text, without the
    hint), so an answer the oracle's state reports right after a search is always one that search returned.
    """
    tags = get_tag_set(record.tag_set)
    questions = [q.strip() for q in record.questions]
    retrieved: list[list[str]] = [[] for _ in questions]
    for turn in record.turns:
        if turn.action.get("kind") == "query" and turn.action.get("text") in questions and turn.observation_ids:
            text = tokenizer.decode(turn.observation_ids, skip_special_tokens=False)
            retrieved[questions.index(turn.action["text"])].append(observation_body(text, tags))
    return [
        any(answer_in_text(alias, text) for alias in aliases for text in texts)
        for aliases, texts in zip(record.ground_truth, retrieved, strict=True)
    ]


async def run_oracle_episodes(
    tasks: Sequence[Task],
    env,
    tokenizer,
    config: EpisodeConfig | Callable[[Task], EpisodeConfig],
    *,
    concurrency: int = 16,
    on_episode: Callable[[EpisodeRecord], None] | None = None,
    progress: bool = True,
    backend: Any = None,
    reward_fn: RewardFn | None = oracle_reward,
) -> list[EpisodeRecord]:
    """Play every task with a scripted teacher through ``run_episodes``; records come back in task order.

    Each record's reward is ``reward_fn``'s (:func:`oracle_reward`; None: the environment's, as WebShop's purchase
    score) and its ``sampling`` carries ``"oracle": True``; ``on_episode`` sees records as they finish (marked
    already). ``backend``: the teacher, already built for these tasks and settings (an ``OracleBackend`` built here
    when None; ``webshop_oracle.WebShopOracleBackend`` for WebShop). The filter is left to the caller.
    """
    backend = backend or OracleBackend(tasks, tokenizer, config)

    def mark(record: EpisodeRecord) -> None:
        record.sampling = {**record.sampling, ORACLE_MARK: True}
        if on_episode is not None:
            on_episode(record)

    return await run_episodes(
        tasks,
        backend,
        env,
        tokenizer,
        config,
        concurrency=concurrency,
        reward_fn=reward_fn,
        on_episode=mark,
        progress=progress,
        desc="oracle episodes",
    )
