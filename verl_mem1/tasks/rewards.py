"""QA rewards: exact match and token F1 over multi-objective answers, and verl's custom reward function.

A composite task's answer is ``answer 1; answer 2; ...`` (split with the protocol's :func:`split_answers`) and
answer *i* is scored against the aliases of question *i*: missing answers score 0, extra ones are ignored. The
paper reports the **sum** over objectives (``reduce="sum"``, the default); ``reduce="mean"`` gives a 0..1 score.

Normalisation is the SQuAD / Search-R1 ``normalize_answer`` (lowercase, drop ASCII punctuation, the articles
a/an/the and extra whitespace) and nothing more: no accent folding, so ``"Zürich"`` matches ``"zürich"`` but not
``"Zurich"``. That keeps EM numbers comparable with Search-R1's and MEM1's.

Use it in verl (0.9) as the custom reward function; ``pkg://`` makes verl import it as a module::

    reward.custom_reward_function.path=pkg://verl_mem1.tasks.rewards \\
    reward.custom_reward_function.name=compute_score \\
    +reward.custom_reward_function.reward_kwargs.metric=em      # optional: em|f1, reduce, format_bonus

(verl's fully-async trainer also migrates the legacy top-level ``custom_reward_function.path=...`` spelling.)
A file path to this module works too (verl then loads a private copy of it; see the note on imports below).
"""

# No ``from __future__ import annotations``: verl may load this file by path without registering it in
# sys.modules, and dataclasses cannot resolve string annotations of such a module.
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from verl_mem1.protocol.parser import parse_turn, split_answers
from verl_mem1.protocol.tags import PAPER, SEARCH_R1, TagSet, get_tag_set

if TYPE_CHECKING:
    from verl_mem1.records import EpisodeRecord

__all__ = [
    "AnswerScore",
    "compute_score",
    "exact_match",
    "extract_answer",
    "f1_score",
    "is_well_formed",
    "normalize_answer",
    "normalize_ground_truth",
    "score_answer",
]

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPECIAL = ("yes", "no", "noanswer")  # SQuAD/HotpotQA: these earn no partial F1 credit


def normalize_answer(text: str) -> str:
    """SQuAD's normaliser: lowercase, remove ASCII punctuation, articles and extra whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _as_aliases(aliases: str | Sequence[str]) -> list[str]:
    return [aliases] if isinstance(aliases, str) else [str(a) for a in aliases]


def exact_match(prediction: str | None, aliases: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised alias. An empty prediction never scores."""
    if prediction is None or not prediction.strip():
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in _as_aliases(aliases)))


def _f1(pred: str, gold: str) -> float:
    if (pred in _SPECIAL or gold in _SPECIAL) and pred != gold:
        return 0.0
    pred_tokens, gold_tokens = pred.split(), gold.split()
    if not pred_tokens or not gold_tokens:  # e.g. gold "A" normalises to nothing: only an exact match counts
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str | None, aliases: str | Sequence[str]) -> float:
    """Token F1 (max over aliases); yes/no/noanswer must match exactly. An empty prediction never scores."""
    if prediction is None or not prediction.strip():
        return 0.0
    pred = normalize_answer(prediction)
    return max((_f1(pred, normalize_answer(a)) for a in _as_aliases(aliases)), default=0.0)


@dataclass(frozen=True)
class AnswerScore:
    """Scores of one answer against a (multi-objective) ground truth; ``em``/``f1`` are reduced per-objective."""

    em: float
    f1: float
    em_per_objective: list[float] = field(default_factory=list)
    f1_per_objective: list[float] = field(default_factory=list)
    num_objectives: int = 0
    num_answers: int = 0  # parts the answer held (0 for no answer); extra parts are not scored


def _to_list(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def normalize_ground_truth(ground_truth: Any, num_objectives: int | None = None) -> list[list[str]]:
    """One alias list per objective from what verl hands over: lists or numpy arrays (nested or not), a bare
    string, or Search-R1's ``{"target": [...]}``.

    A flat list of strings is ambiguous: it is one objective's aliases (Search-R1's format) unless
    ``num_objectives`` says there are that many single-alias objectives.
    """
    if isinstance(ground_truth, Mapping) and "target" in ground_truth:
        ground_truth = ground_truth["target"]
    ground_truth = _to_list(ground_truth)
    if isinstance(ground_truth, str):
        ground_truth = [ground_truth]
    if not isinstance(ground_truth, list) or not ground_truth:
        raise ValueError(f"ground truth must be a non-empty list of alias lists, got {ground_truth!r}")
    items = [_to_list(g) for g in ground_truth]
    if all(isinstance(g, str) for g in items):
        if num_objectives is not None and num_objectives > 1 and num_objectives == len(items):
            return [[g] for g in items]
        return [list(items)]
    out = []
    for g in items:
        g = [g] if isinstance(g, str) else g
        if not isinstance(g, list) or not all(isinstance(a, str) for a in g):
            raise ValueError(f"ground truth must be a non-empty list of alias lists, got {ground_truth!r}")
        out.append(g)
    return out


def score_answer(
    answer: str | None,
    ground_truth: Sequence[Sequence[str]],
    *,
    reduce: Literal["sum", "mean"] = "sum",
) -> AnswerScore:
    """Score an answer position by position against one alias list per objective.

    With several objectives the answer is split on ";"; answer *i* is matched against objective *i* only.
    With one objective the whole answer is the answer (it is not split: a ";" in it is part of the text), which
    matches single-objective Search-R1 scoring. The MEM1 reference scorer returns 0 for every single-objective
    task (it needs two ``<answer>`` tags in the text); this one does not. ``None`` (no answer) scores 0.
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    truth = normalize_ground_truth(ground_truth)
    n = len(truth)
    if answer is None:
        parts: list[str] = []
    elif n == 1:
        parts = [answer.strip()]
    else:
        parts = split_answers(answer)
    em = [exact_match(parts[i], truth[i]) if i < len(parts) else 0.0 for i in range(n)]
    f1 = [f1_score(parts[i], truth[i]) if i < len(parts) else 0.0 for i in range(n)]
    scale = 1.0 if reduce == "sum" else 1.0 / n
    return AnswerScore(sum(em) * scale, sum(f1) * scale, em, f1, n, len(parts))


RewardFn = Callable[[str | None, list[list[str]]], float]  # (final answer, one alias list per objective) -> reward


def answer_reward(metric: Literal["em", "f1"] = "em", reduce: Literal["sum", "mean"] = "sum") -> RewardFn:
    """The QA reward of a final answer: EM or F1 (``metric``) over its objectives, summed or averaged (``reduce``),
    by :func:`score_answer`. Every consumer scores answers through it or through :func:`compute_score`, verl's custom
    reward (the same two settings in ``reward_kwargs``), which verl's trainer calls: evaluation (EM), teacher
    trajectories (EM averaged), the rollout CLI (EM summed)."""
    if metric not in ("em", "f1"):
        raise ValueError(f"metric must be 'em' or 'f1', got {metric!r}")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")

    def reward(answer: str | None, ground_truth: list[list[str]]) -> float:
        score = score_answer(answer, ground_truth, reduce=reduce)
        return score.em if metric == "em" else score.f1

    return reward


def penalised(reward: float, record: "EpisodeRecord", invalid_action_penalty: float) -> float:
    """``reward`` minus ``invalid_action_penalty`` per invalid turn: the one place the penalty is applied, whoever
    scored the episode (the episode loop's reward function, the environment, or verl's agent loop after the
    episode)."""
    return reward - invalid_action_penalty * record.invalid_turns


# Observations (written by the environment) are not the model's words: the last-turn hint even contains
# "<answer>…</answer>". Both dialects' observation blocks are removed before looking for the answer.
_OBSERVATION = re.compile(r"<(info|information)>.*?</\1>", re.DOTALL)
_ANSWER = re.compile(r"<answer>((?:(?!</?answer>).)*)</answer>", re.DOTALL)


def extract_answer(response: str) -> str | None:
    """The last complete ``<answer>…</answer>`` outside observation blocks (stripped), or None."""
    text = _OBSERVATION.sub("\n", response)
    matches = _ANSWER.findall(text)
    return matches[-1].strip() if matches else None


def _detect_tags(response: str) -> TagSet:
    if SEARCH_R1.open(SEARCH_R1.state) in response and PAPER.open(PAPER.state) not in response:
        return SEARCH_R1
    return PAPER


def is_well_formed(response: str, tags: TagSet | None = None) -> bool:
    """Every turn is exactly one internal-state block followed by exactly one action; every turn but the last
    is a query and the last one answers. Turns are the text between observation blocks."""
    tags = tags or _detect_tags(response)
    turns = [t for t in _OBSERVATION.split(response)[::2] if t.strip()]  # split() also returns the tag names
    if not turns:
        return False
    for i, turn in enumerate(turns):
        last = i == len(turns) - 1
        kind, tag = ("answer", tags.answer) if last else ("query", tags.query)
        other = tags.query if last else tags.answer
        counts = [turn.count(tags.open(t)) + turn.count(tags.close(t)) for t in (tags.state, tag, other)]
        if counts != [2, 2, 0]:
            return False
        parsed = parse_turn(turn, tags, require_state=True)
        if parsed.action.kind != kind or not parsed.internal_state:
            return False
    return True


# ``extra_info`` key under which the MEM1 agent loop passes the answer its episode loop recorded (None: the episode
# never answered), so the reward scores exactly what the protocol parser accepted instead of re-parsing the text.
RECORDED_ANSWER_KEY = "mem1_final_answer"


def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
    metric: Literal["em", "f1"] = "em",
    reduce: Literal["sum", "mean"] = "sum",
    format_bonus: float = 0.0,
    tags: str | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """verl custom reward: score the last answer in ``solution_str`` against ``ground_truth``.

    Returns ``{"score", "em", "f1", "num_objectives", "num_answers", "answered", "well_formed"}`` (verl uses
    ``score`` as the reward and logs the rest). ``format_bonus`` is added when the response is well-formed
    (:func:`is_well_formed`); it is 0 by default because the MEM1 paper found that a format reward speeds up
    learning the format but lowers final accuracy. ``tags`` (or ``extra_info["tags"]``) names the tag set for
    the format check; otherwise it is detected from the text. ``extra_info[RECORDED_ANSWER_KEY]``, when present,
    is the episode's recorded answer and is scored as is; without it (verl's reward manager on decoded text) the
    last ``<answer>`` of ``solution_str`` is. Other keyword arguments verl passes are ignored.
    """
    if metric not in ("em", "f1"):
        raise ValueError(f"metric must be 'em' or 'f1', got {metric!r}")
    info = dict(extra_info) if isinstance(extra_info, Mapping) else {}
    num_objectives = info.get("objectives")
    if num_objectives is None and info.get("questions") is not None:
        num_objectives = len(_to_list(info["questions"]))
    truth = normalize_ground_truth(ground_truth, int(num_objectives) if num_objectives is not None else None)
    answer = info[RECORDED_ANSWER_KEY] if RECORDED_ANSWER_KEY in info else extract_answer(solution_str)
    result = score_answer(answer, truth, reduce=reduce)
    tag_name = tags or info.get("tags")
    well_formed = is_well_formed(solution_str, get_tag_set(tag_name) if tag_name else None)
    score = (result.em if metric == "em" else result.f1) + (format_bonus if well_formed else 0.0)
    return {
        "score": float(score),
        "em": result.em,
        "f1": result.f1,
        "num_objectives": float(result.num_objectives),
        "num_answers": float(result.num_answers),
        "answered": float(answer is not None),
        "well_formed": float(well_formed),
    }
