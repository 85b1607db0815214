"""A scripted WebShop shopper for supervised fine-tuning: search with the instruction, open the goal product, pick
the goal's options, buy.

Like the QA oracle (``oracle.py``), ``WebShopOracleBackend`` is an ``LLMBackend`` that plays through the real
episode loop, keeps no per-episode state (its ``<IS>`` is its only memory, as for a MEM1 agent) and reads each
context it is given: the prompt says which task, the last turn's action and the page after it say what to do::

    no turn yet                      <IS>Looking for: … Next: search.</IS><action>search[INSTRUCTION]</action>
    results page with the target     … Next: open B0…</IS><action>click[b0…]</action>
    results page without it          … Next: next page.</IS><action>click[next >]</action>
    item page, a goal option left    … Chosen: size: large. Next: choose color.</IS><action>click[red]</action>
    item page, every option chosen   … Next: buy.</IS><action>click[buy now]</action>

It needs each task's target ASIN and options (``extra_info.target_asin`` / ``goal_options``, which the WebShop
server's ``/goals`` and ``mem1 webshop-tasks`` provide); the server scores the purchase. An option whose value
the item page does not list is skipped, so the reward says whether the episode is worth imitating.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from verl_mem1.protocol import TagSet, get_tag_set, parse_turn
from verl_mem1.records import Task
from verl_mem1.rollout.backends.base import Generation, SamplingConfig
from verl_mem1.rollout.backends.oracle import PromptIndex, observation_body, scripted_generation, split_turns
from verl_mem1.rollout.episode import EpisodeConfig, default_max_turns, prompt_ids_for

NEXT_PAGE = "next >"
BUY = "buy now"
AVAILABLE = "available actions:"  # the WebShop client's last observation line lists the page's clicks
_CLICK = re.compile(r"click\[([^\]]*)\]")


@dataclass(frozen=True)
class _Goal:
    instruction: str
    asin: str  # lower case, as the page's clickables
    options: tuple[tuple[str, str], ...]  # (name, value), value lower case
    tags: TagSet


def _chosen(goal: _Goal, state: str, last_click: str | None) -> list[tuple[str, str]]:
    """The goal options chosen so far: those the state lists, plus the one the last action clicked."""
    listed = state.partition("Chosen:")[2].lower()
    return [(n, v) for n, v in goal.options if f"{n.lower()}: {v}" in listed or v == last_click]


def _state(goal: _Goal, *, opened: bool, chosen: Sequence[tuple[str, str]], next_step: str) -> str:
    parts = [f"Looking for: {goal.instruction}."]
    if opened:
        parts.append(f"Opened {goal.asin.upper()}.")
    if chosen:
        parts.append("Chosen: " + "; ".join(f"{n}: {v}" for n, v in chosen) + ".")
    parts.append(f"Next: {next_step}.")
    return " ".join(parts)


class WebShopOracleBackend:
    """Shops each task's goal (see the module docstring).

    Args:
        tasks: WebShop tasks with ``extra_info.target_asin`` and ``extra_info.goal_options``.
        tokenizer: the student model's tokenizer (its chat template makes the prompts).
        config: the episode settings, as given to ``run_episodes`` (the oracle recomputes each task's prompt).

    Raises ``ValueError`` for a task without a target ASIN or with a tag set other than WebShop's.
    """

    def __init__(self, tasks: Sequence[Task], tokenizer, config: EpisodeConfig | Callable[[Task], EpisodeConfig]):
        self.tokenizer = tokenizer
        self._prompts = PromptIndex()
        for task in tasks:
            settings = config(task) if callable(config) else config
            tags = get_tag_set(settings.tags)
            if tags.answers:
                raise ValueError(f"task {task.id!r}: tag set {tags.name!r} is a QA dialect; WebShop needs 'webshop'")
            asin = str(task.extra_info.get("target_asin") or "")
            if not asin:
                raise ValueError(f"task {task.id!r}: no extra_info.target_asin (the oracle must know the product)")
            options = task.extra_info.get("goal_options") or {}
            goal = _Goal(
                task.questions[0],
                asin.lower(),
                tuple((str(n), str(v).lower()) for n, v in sorted(dict(options).items())),
                tags,
            )
            max_turns = settings.max_turns or default_max_turns(1, settings.tags)
            self._prompts.add(prompt_ids_for(task, tokenizer, settings.tags, max_turns), goal)

    def turn_text(self, context: list[int]) -> str:
        """What the oracle writes after ``context``."""
        goal, prompt_len = self._prompts.match(context)
        tags = goal.tags
        tail = self.tokenizer.decode(context[prompt_len:], skip_special_tokens=False) if context[prompt_len:] else ""
        turns = split_turns(tail, tags)
        if not turns:
            action, state = f"search[{goal.instruction}]", _state(goal, opened=False, chosen=(), next_step="search")
        else:
            generated, observation = turns[-1]
            parsed = parse_turn(generated, tags)
            last = parsed.action.text.strip().lower() if parsed.action.kind == "query" else ""
            page = observation_body(observation, tags).lower()
            clickable = set(_CLICK.findall(page.rpartition(AVAILABLE)[2])) if AVAILABLE in page else set()
            clicked = last[len("click[") : -1] if last.startswith("click[") and last.endswith("]") else None
            if BUY not in clickable:  # a results page (or an invalid action's page without the target)
                if goal.asin in clickable:
                    action, step = f"click[{goal.asin}]", f"open {goal.asin.upper()}"
                elif NEXT_PAGE in clickable:
                    action, step = f"click[{NEXT_PAGE}]", "next page"
                else:
                    action, step = f"search[{goal.instruction}]", "search again"
                state = _state(goal, opened=False, chosen=(), next_step=step)
            else:
                chosen = _chosen(goal, parsed.internal_state or "", clicked)
                left = [(n, v) for n, v in goal.options if (n, v) not in chosen and v in clickable]
                if left:
                    action, step = f"click[{left[0][1]}]", f"choose {left[0][0]}"
                else:
                    action, step = f"click[{BUY}]", "buy"
                state = _state(goal, opened=True, chosen=chosen, next_step=step)
        return f"{tags.open(tags.state)}{state}{tags.close(tags.state)}{tags.open(tags.query)}{action}" + tags.close(
            tags.query
        )

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        return scripted_generation(self.tokenizer, self.turn_text(list(prompt_ids)), sampling)
