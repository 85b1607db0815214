"""The WebShop dialect of the MEM1 protocol: the shopping prompt and the observation body of a page.

The agent keeps its internal state in ``<IS>`` and acts with one WebShop action per turn inside ``<action>``:
``search[keywords]`` on the search page, ``click[button]`` elsewhere. A purchase (``click[Buy Now]``) ends the
episode; the environment's reward scores it. Each observation lists the page's available actions, because a
MEM1 agent that drops its context cannot remember which buttons the page had.
"""

from __future__ import annotations

from collections.abc import Sequence

from verl_mem1.protocol.tags import WEBSHOP, TagSet

__all__ = ["build_webshop_prompt_messages", "format_webshop_page"]

WEBSHOP_PROMPT_TEMPLATE = """\
You are shopping in a web shop for the product described by an instruction. You act over several turns.

After every turn, everything except your latest internal state and the latest page is removed from your context. \
Your internal state is your only memory, so it must carry everything you still need.

In every turn, respond in exactly this format:
1. First, inside {state_open} {state_close}, write your internal state: the requirements of the instruction \
(product type, attributes, options such as size or color, price limit), what you have seen and chosen so far, \
and what to do next.
2. Then take exactly one action inside {action_open} {action_close}:
   - search[keywords] to search for products (only on the search page);
   - click[button] to click one of the page's available actions: a product ID in the results, an option value, \
Description, Features, Reviews, < Prev, Next >, Back to Search, or Buy Now.
The page after your action is shown inside {info_open} {info_close}, with its available actions.

On a product's page, click every option the instruction asks for (each option value is a button) before you \
click Buy Now. Clicking Buy Now ends the episode: you are scored on how well the product, its options and its \
price match the instruction.
{turns_rule}
Instruction: {instruction}

You are on the search page: {first_page}
"""

TURNS_RULE = """
You have at most {max_turns} turns. Each {info_open} {info_close} starts with a hint saying how many turns you have \
left; buy before you run out.
"""

FIRST_PAGE = "search[keywords] is available."


def format_webshop_page(page: str, has_search_bar: bool, clickables: Sequence[str]) -> str:
    """A page's text followed by its available actions, the way the agent must write them."""
    actions = (["search[<keywords>]"] if has_search_bar else []) + [f"click[{c}]" for c in clickables]
    return f"{page}\nAvailable actions: {', '.join(actions) if actions else 'none'}"


def build_webshop_prompt_messages(
    instruction: str, tags: TagSet = WEBSHOP, *, max_turns: int | None = None
) -> list[dict[str, str]]:
    """Chat messages for one WebShop goal."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"a WebShop task needs its instruction text, got {instruction!r}")
    if max_turns is not None and (isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1):
        raise ValueError(f"max_turns must be a positive int or None, got {max_turns!r}")
    fields = {
        "state_open": tags.open(tags.state),
        "state_close": tags.close(tags.state),
        "action_open": tags.open(tags.query),
        "action_close": tags.close(tags.query),
        "info_open": tags.open(tags.info),
        "info_close": tags.close(tags.info),
    }
    turns_rule = TURNS_RULE.format(max_turns=max_turns, **fields) if max_turns is not None else ""
    content = WEBSHOP_PROMPT_TEMPLATE.format(
        instruction=instruction.strip(), turns_rule=turns_rule, first_page=FIRST_PAGE, **fields
    )
    return [{"role": "user", "content": content}]
