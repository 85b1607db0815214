"""WebShop tasks as verl RL parquet: one row per goal of a WebShop catalog (``mem1 webshop-tasks``).

A row names its goal by index (``extra_info.goal_index``) and carries the goal's instruction in its prompt; the
WebShop server checks the instruction when a session opens, so tasks and server must come from the same data
and seed. The reward is the server's (the purchase score), so ``reward_model.ground_truth`` is only the target
ASIN, for reference. WebShop's own split of its goals (its baseline environment, used for its human goals):
test 0–499, eval 500–1499, train 1500 onwards, by the names of :data:`WEBSHOP_SPLITS`.
"""

from __future__ import annotations

from typing import Any

from verl_mem1.protocol import build_prompt_messages, get_tag_set
from verl_mem1.records import Task

ABILITY = "webshop"
DATA_SOURCE = "webshop"


# WebShop's split of its shuffled goal list (baseline_models/env.py): name -> (start, stop or None for the end)
WEBSHOP_SPLITS: dict[str, tuple[int, int | None]] = {"test": (0, 500), "eval": (500, 1500), "train": (1500, None)}


def parse_goal_range(spec: str, total: int) -> range:
    """``"START:STOP"`` (STOP optional: to the end), or a WebShop split name (``test``, ``eval``, ``train``), as a range
    of goal indices within ``total``."""
    if spec in WEBSHOP_SPLITS:
        start, stop = WEBSHOP_SPLITS[spec]
        stop = total if stop is None else stop
        if not start < stop <= total:
            raise ValueError(
                f"WebShop's {spec!r} split is goals {start}:{stop if stop != total else ''} but the catalog has "
                f"{total} goals (WebShop's full goal sets have thousands)"
            )
        return range(start, stop)
    start_text, sep, stop_text = spec.partition(":")
    try:
        start = int(start_text) if start_text.strip() else 0
        stop = int(stop_text) if sep and stop_text.strip() else (total if sep else start + 1)
    except ValueError:
        raise ValueError(f"goal range must be START:STOP (STOP optional), got {spec!r}") from None
    if not 0 <= start < stop <= total:
        raise ValueError(f"goal range {spec!r} is outside the catalog's goals 0:{total}")
    return range(start, stop)


def named_options(goal: dict[str, Any]) -> dict[str, str]:
    """A synthetic goal's options by name; a human goal's options are values without names (a list): none named."""
    options = goal.get("goal_options") or {}
    return dict(options) if isinstance(options, dict) else {}


def webshop_task(goal_index: int, instruction: str, asin: str = "", options: dict[str, str] | None = None) -> Task:
    """The task of one goal, as a row of :func:`webshop_rows` loads: the instruction is its one question, and
    it has no answers (the purchase is scored by the server). The target ASIN and options (name → value) are for
    reference and for a scripted teacher; a model never sees them."""
    extra = {"goal_index": goal_index, "target_asin": asin, "tags": "webshop", "goal_options": dict(options or {})}
    return Task(id=f"webshop-{goal_index}", questions=[instruction], ground_truth=[], data_source=DATA_SOURCE,
                extra_info=extra)  # fmt: skip


def webshop_rows(
    goals: list[dict[str, Any]],
    indices: range,
    *,
    split: str,
    tags: str = "webshop",
    max_turns: int | None = None,
    agent_name: str | None = None,
) -> list[dict[str, Any]]:
    """verl RL rows for ``goals[i]``, i in ``indices``."""
    tag_set = get_tag_set(tags)
    if tag_set.answers:
        raise ValueError(f"tag set {tags!r} is a QA dialect; WebShop tasks need the webshop tag set")
    rows = []
    for i in indices:
        goal = goals[i]
        row = {
            "id": f"webshop-{i}",
            "data_source": DATA_SOURCE,
            "ability": ABILITY,
            "prompt": build_prompt_messages([goal["instruction_text"]], tag_set, max_turns=max_turns),
            "reward_model": {"style": "env", "ground_truth": goal["asin"]},
            "extra_info": {
                "index": i,
                "goal_index": i,
                "split": split,
                "questions": [goal["instruction_text"]],
                "target_asin": goal["asin"],
                "tags": tag_set.name,
                "max_turns": max_turns,
            },
        }
        if named_options(goal):  # Parquet cannot hold a column of empty structs (every human goal's)
            row["extra_info"]["goal_options"] = named_options(goal)
        if agent_name:
            row["agent_name"] = agent_name
        rows.append(row)
    return rows
