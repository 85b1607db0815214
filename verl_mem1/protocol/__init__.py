"""The MEM1 turn protocol: tags, prompts, the turn parser, the turns-left hint and context policies.

Pure Python on purpose: the protocol knows nothing of models or tokenizers, so rollout, training and
evaluation can all share it.
"""

from verl_mem1.protocol.context import (
    ContextPolicy,
    FullContext,
    Mem1Context,
    TurnTokens,
    WindowContext,
    parse_context_policy,
)
from verl_mem1.protocol.hint import (
    format_documents,
    format_invalid_observation,
    format_observation,
    turns_left_hint,
)
from verl_mem1.protocol.parser import Action, ActionKind, ParsedTurn, parse_turn, split_answers
from verl_mem1.protocol.prompts import build_prompt_messages
from verl_mem1.protocol.tags import PAPER, SEARCH_R1, WEBSHOP, TagSet, get_tag_set
from verl_mem1.protocol.webshop import build_webshop_prompt_messages, format_webshop_page

__all__ = [
    "PAPER",
    "SEARCH_R1",
    "WEBSHOP",
    "Action",
    "ActionKind",
    "ContextPolicy",
    "FullContext",
    "Mem1Context",
    "ParsedTurn",
    "TagSet",
    "TurnTokens",
    "WindowContext",
    "build_prompt_messages",
    "build_webshop_prompt_messages",
    "format_documents",
    "format_invalid_observation",
    "format_observation",
    "format_webshop_page",
    "get_tag_set",
    "parse_context_policy",
    "parse_turn",
    "split_answers",
    "turns_left_hint",
]
