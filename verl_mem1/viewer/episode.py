"""One episode record as the viewer shows it: decoded parts of every turn's context, and what the rule dropped.

A turn's context is rebuilt with the record's own context policy (``protocol/context.py``) from the recorded token ids,
so the page shows the turns the rule kept and dropped as the rollout built them; a context that does not match the
rebuilt one (a record written by another tool) is shown decoded as a whole and flagged, never silently relabelled.
Text is decoded from the recorded ids, special tokens included: what the model saw, not a re-rendering of it.
"""

from __future__ import annotations

import re
from typing import Any

from verl_mem1.evaluation.metrics import episode_metrics
from verl_mem1.protocol.context import ContextPolicy, TurnTokens, parse_context_policy
from verl_mem1.protocol.tags import TagSet, get_tag_set
from verl_mem1.records import EpisodeRecord
from verl_mem1.viewer.load import LoadedEpisode

_HINT = re.compile(r"\[HINT\].*?\[/HINT\]", re.S)


def generated_spans(text: str, tags: TagSet) -> list[list[str]]:
    """``[kind, text]`` spans of a generation: ``state``/``query``/``answer`` for tagged blocks (an unclosed block at
    the end, e.g. a generation cut by the token budget, runs to the end), ``text`` for the rest."""
    kinds = {tags.state: "state", tags.query: "query", tags.answer: "answer"}
    names = "|".join(re.escape(name) for name in kinds)
    pattern = re.compile(rf"<({names})>.*?(?:</\1>|\Z)", re.S)
    spans, at = [], 0
    for match in pattern.finditer(text):
        if match.start() > at:
            spans.append(["text", text[at : match.start()]])
        spans.append([kinds[match.group(1)], match.group(0)])
        at = match.end()
    if at < len(text):
        spans.append(["text", text[at:]])
    return spans


def observation_spans(text: str) -> list[list[str]]:
    """``[kind, text]`` spans of an observation: the turns-left ``hint`` and the environment's ``observation``."""
    spans, at = [], 0
    for match in _HINT.finditer(text):
        if match.start() > at:
            spans.append(["observation", text[at : match.start()]])
        spans.append(["hint", match.group(0)])
        at = match.end()
    if at < len(text):
        spans.append(["observation", text[at:]])
    return spans


def kept_turns(policy: ContextPolicy, turn: int) -> list[int]:
    """Indices of the earlier turns the policy puts in turn ``turn``'s context, asked of the policy itself."""
    marked = [TurnTokens(generated_ids=[j], observation_ids=[]) for j in range(turn)]
    return list(policy.build([], marked))


def episode_view(loaded: LoadedEpisode, tokenizer: Any, key: int) -> dict[str, Any]:
    """What the page shows of one episode (JSON-serialisable); ``key`` is its index on the page."""
    record: EpisodeRecord = loaded.record
    decode = lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)  # noqa: E731
    tags = get_tag_set(record.tag_set)
    try:
        policy: ContextPolicy | None = parse_context_policy(record.context_policy)
    except ValueError:
        policy = None
    metrics = episode_metrics(record)
    sizes = [len(t.generated_ids) + len(t.observation_ids) for t in record.turns]
    history = [TurnTokens(t.generated_ids, t.observation_ids) for t in record.turns]
    turns, previous_visible = [], set()
    for t, turn in enumerate(record.turns):
        # an unknown policy: nothing is said kept or dropped, and the context is shown as recorded
        kept = kept_turns(policy, t) if policy else []
        matches = policy is not None and policy.build(record.prompt_ids, history[:t]) == list(turn.context_ids)
        dropped_now = sorted(previous_visible - set(kept)) if policy else []
        dropped_all = [j for j in range(t) if j not in kept] if policy else []
        previous_visible = set(kept) | {t}
        view = {
            "index": turn.index,
            "context_tokens": len(turn.context_ids),
            "generated_tokens": len(turn.generated_ids),
            "observation_tokens": len(turn.observation_ids),
            "kept": kept,
            "dropped": dropped_now,
            "dropped_tokens": sum(sizes[j] for j in dropped_now),
            "dropped_total_tokens": sum(sizes[j] for j in dropped_all),
            "context_matches": matches,
            "generated": generated_spans(turn.text, tags),
            "observation": observation_spans(decode(turn.observation_ids)) if turn.observation_ids else [],
            "internal_state": turn.internal_state,
            "action": dict(turn.action),
            "finish_reason": turn.finish_reason,
        }
        if not matches:
            view["context_text"] = decode(turn.context_ids)
        turns.append(view)
    return {
        "key": key,
        "id": record.id,
        "step": loaded.step,
        "source": loaded.source,
        "policy": record.context_policy,
        "tag_set": record.tag_set,
        "data_source": record.data_source,
        "questions": list(record.questions),
        "ground_truth": [list(a) for a in record.ground_truth],
        "final_answer": record.final_answer,
        "termination": record.termination,
        "error": record.error,
        "objectives": metrics["num_objectives"],
        "reward": record.reward,
        "em": metrics["em"],
        "f1": metrics["f1"],
        "peak_tokens": metrics["peak_tokens"],
        "dependency": metrics["dependency"],
        "invalid_actions": metrics["invalid_actions"],
        "prompt": decode(record.prompt_ids),
        "prompt_tokens": len(record.prompt_ids),
        "turns": turns,
    }
