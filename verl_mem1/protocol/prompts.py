"""Prompt templates for single- and multi-objective QA.

The paper dialect explains the MEM1 contract in the paper's terms (``<IS>`` internal state, ``<query>``,
``<info>``). The Search-R1 dialect keeps the wording style the released MEM1 checkpoints were trained on
(``<think>`` summary, ``<search>``, ``<information>``, answers separated by semicolons), so they run unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from verl_mem1.protocol.tags import PAPER, SEARCH_R1, TagSet
from verl_mem1.protocol.webshop import build_webshop_prompt_messages

__all__ = ["build_prompt_messages"]

PAPER_PROMPT_TEMPLATE = """\
You will answer {target} by searching for information over several turns.

After every turn, everything except your latest internal state and the latest search results is removed from \
your context. Your internal state is your only memory, so it must carry everything you still need.

In every turn, respond in exactly this format:
1. First, inside {state_open} {state_close}, write your internal state: a concise, cumulative summary of what you \
have learned so far (facts and answers already found), the searches you have already made, and what to do next.
2. Then take exactly one action:
   - To search, write a query (keywords or a short phrase) inside {query_open} {query_close}. The results will be \
returned inside {info_open} {info_close}.
   - To finish, write the final answer inside {answer_open} {answer_close}: only the answer, no explanation.
{rules}
{questions_block}
"""

PAPER_MULTI_RULES = """
Rules for multiple questions:
- Search for one question at a time; do not combine questions in one query.
- When every question is answered, give all the answers in a single {answer_open} {answer_close}, in the order of \
the questions and separated by semicolons: {answer_open}answer 1; answer 2; ...{answer_close}
"""

PAPER_TURNS_RULE = """
You have at most {max_turns} turns. Each {info_open} {info_close} starts with a hint saying how many turns you have \
left; answer before you run out.
"""

PAPER_SINGLE_QUESTION = "Question: {question}"
PAPER_MULTI_QUESTIONS = "Questions:\n{numbered}"
PAPER_NUMBERED_QUESTION = "{index}. {question}"

SEARCH_R1_PROMPT_TEMPLATE = """\
You will answer {target} using iterative reasoning, summarization, and web search.

At each step you see the {target_short}, your latest summary, your latest search query and its search results \
(at the first step you see only the {target_short}). At each step you must:

1. Reason, then update a concise, cumulative summary inside {state_open} ... {state_close}. It is your persistent \
memory: everything else is discarded, so it must keep all essential information from your previous \
{state_open} {state_close} and from {info_open} {info_close}.

2. Then choose exactly one action:
   - {search_when} write a search query (keywords or a short phrase) inside {query_open} ... {query_close}. \
The results come back inside {info_open} ... {info_close}.
   - {final}

Important:
- Always respond as {state_open} ... {state_close}{query_open} ... {query_close} or \
{state_open} ... {state_close}{answer_open} ... {answer_close}.
- Do not search for several queries or questions at once.{turns_rule}

{questions_block}
"""

SEARCH_R1_SINGLE_SEARCH_WHEN = "If the question is not answered yet,"
SEARCH_R1_MULTI_SEARCH_WHEN = "If any question is still unanswered, pick one and"
SEARCH_R1_SINGLE_FINAL = (
    "If the question is answered, give the final answer inside {answer_open} ... {answer_close}. "
    "The answer must be concise, with no explanation."
)
SEARCH_R1_MULTI_FINAL = (
    "If all questions are answered, give the final answers, separated by semicolons, inside "
    "{answer_open} answer1; answer2; ... {answer_close}. The answers must be concise, with no explanations."
)
SEARCH_R1_TURNS_RULE = (
    "\n- You have at most {max_turns} turns; each {info_open} {info_close} tells you how many are left."
)
SEARCH_R1_SINGLE_QUESTION = "Question: {question}"
SEARCH_R1_MULTI_QUESTIONS = "Answer the following questions: {numbered}"
SEARCH_R1_NUMBERED_QUESTION = "{index}. {question}"


def _tag_fields(tags: TagSet) -> dict[str, str]:
    return {
        "state_open": tags.open(tags.state),
        "state_close": tags.close(tags.state),
        "query_open": tags.open(tags.query),
        "query_close": tags.close(tags.query),
        "info_open": tags.open(tags.info),
        "info_close": tags.close(tags.info),
        "answer_open": tags.open(tags.answer),
        "answer_close": tags.close(tags.answer),
    }


def _paper_prompt(questions: list[str], tags: TagSet, max_turns: int | None) -> str:
    fields = _tag_fields(tags)
    multi = len(questions) > 1
    if multi:
        numbered = "\n".join(PAPER_NUMBERED_QUESTION.format(index=i, question=q) for i, q in enumerate(questions, 1))
        questions_block = PAPER_MULTI_QUESTIONS.format(numbered=numbered)
    else:
        questions_block = PAPER_SINGLE_QUESTION.format(question=questions[0])
    rules = PAPER_MULTI_RULES.format(**fields) if multi else ""
    if max_turns is not None:
        rules += PAPER_TURNS_RULE.format(max_turns=max_turns, **fields)
    return PAPER_PROMPT_TEMPLATE.format(
        target=f"{len(questions)} questions" if multi else "a question",
        rules=rules,
        questions_block=questions_block,
        **fields,
    )


def _search_r1_prompt(questions: list[str], tags: TagSet, max_turns: int | None) -> str:
    fields = _tag_fields(tags)
    multi = len(questions) > 1
    if multi:
        numbered = "; ".join(
            SEARCH_R1_NUMBERED_QUESTION.format(index=i, question=q) for i, q in enumerate(questions, 1)
        )
        questions_block = SEARCH_R1_MULTI_QUESTIONS.format(numbered=numbered)
    else:
        questions_block = SEARCH_R1_SINGLE_QUESTION.format(question=questions[0])
    turns_rule = SEARCH_R1_TURNS_RULE.format(max_turns=max_turns, **fields) if max_turns is not None else ""
    return SEARCH_R1_PROMPT_TEMPLATE.format(
        target="multiple complex questions" if multi else "a complex question",
        target_short="questions" if multi else "question",
        search_when=SEARCH_R1_MULTI_SEARCH_WHEN if multi else SEARCH_R1_SINGLE_SEARCH_WHEN,
        final=(SEARCH_R1_MULTI_FINAL if multi else SEARCH_R1_SINGLE_FINAL).format(**fields),
        turns_rule=turns_rule,
        questions_block=questions_block,
        **fields,
    )


def build_prompt_messages(
    questions: Sequence[str], tags: TagSet = PAPER, *, max_turns: int | None = None
) -> list[dict[str, str]]:
    """Chat messages for a QA task with one or more questions (a multi-objective task when several).

    The Search-R1 tag set gets the Search-R1/MEM1-release wording; a tag set whose agent does not answer (WebShop)
    gets the shopping prompt for its one instruction; any other tag set gets the paper wording.
    """
    if isinstance(questions, str):
        raise TypeError("questions must be a sequence of strings, not a single str")
    cleaned = [q.strip() if isinstance(q, str) else q for q in questions]
    if not cleaned:
        raise ValueError("at least one question is required")
    for i, q in enumerate(cleaned):
        if not isinstance(q, str) or not q:
            raise ValueError(f"question {i} is empty or not a string: {questions[i]!r}")
    if max_turns is not None and (isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1):
        raise ValueError(f"max_turns must be a positive int or None, got {max_turns!r}")
    if not tags.answers:
        if len(cleaned) != 1:
            raise ValueError(f"a {tags.name} task has exactly one instruction, got {len(cleaned)}")
        return build_webshop_prompt_messages(cleaned[0], tags, max_turns=max_turns)
    build = _search_r1_prompt if tags == SEARCH_R1 else _paper_prompt
    return [{"role": "user", "content": build(cleaned, tags, max_turns)}]
