"""The WebShop text environment without a browser: sessions, pages, the action grammar and the purchase reward.

Each session walks WebShop's pages — search, results (10 per page, up to 50 results), item (options,
Description / Features / Reviews), buy — with WebShop's actions ``search[keywords]`` and ``click[button]``, and
renders each page as WebShop's ``text`` observation (visible texts joined by ``[SEP]``), or, with ``observation=
"annotated"``, with the chosen options restated on the item page ("You have clicked ...", as WebShop's
``text_rich`` mode does) so an agent that drops its context still knows them. Unlike WebShop, which silently
ignores a bad action, a bad action returns ``valid: false`` and the same page headed by what was wrong.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from env_servers.webshop.data import Catalog
from env_servers.webshop.reward import OPTION_RULES, NounExtractor, noun_extractor, purchase_reward
from env_servers.webshop.search import ProductSearch

PRODUCT_WINDOW = 10
BUY_NOW, NEXT_PAGE, PREV_PAGE, BACK_TO_SEARCH = "Buy Now", "Next >", "< Prev", "Back to Search"
SUB_PAGES = ("Description", "Features", "Reviews", "Attributes")
# webshop: WebShop's own `text` observation, as its templates and convert_html_to_text(simple=True) write it;
# annotated: the same pages with the chosen options restated, "No ..." for an empty sub-page, a results page that
# offers "Next >" only when there is one, and a short purchase page
OBSERVATIONS = ("webshop", "annotated")
SEP = " [SEP] "
_ACTION = re.compile(r"(.+?)\[(.*)\]", re.DOTALL)


class UnknownSession(KeyError):
    """No session with this id (never created, closed, or evicted)."""


class BadGoal(ValueError):
    """A goal index outside the shop's goal list."""


@dataclass
class StepResult:
    observation: str
    reward: float = 0.0
    done: bool = False
    valid: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    available_actions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "observation": self.observation,
            "reward": self.reward,
            "done": self.done,
            "valid": self.valid,
            "info": self.info,
            "available_actions": self.available_actions,
        }


@dataclass
class Session:
    goal_index: int
    goal: dict[str, Any]
    page: str = "search"  # search | results | item | sub | done
    keywords: str = ""
    results: tuple[str, ...] = ()
    results_page: int = 1
    asin: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    sub_page: str | None = None
    reward: float | None = None
    reward_info: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def parse_action(action: str) -> tuple[str, str | None]:
    """``"click[Buy Now]"`` → ``("click", "buy now")``; no brackets → ``(action, None)``. Names lower-cased."""
    match = _ACTION.fullmatch(action.strip())
    if match is None:
        return action.strip().lower(), None
    return match.group(1).strip().lower(), match.group(2).strip().lower()


class Shop:
    """All sessions of one catalog. Thread-safe: sessions lock individually, the session table globally."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        show_attrs: bool = False,
        nouns: NounExtractor | None = None,
        spacy_model: str | None = "en_core_web_sm",
        option_rule: str = "webshop",
        observation: str = "webshop",
        max_sessions: int = 10000,
        seed: int = 0,
    ):
        self.catalog = catalog
        start = time.perf_counter()
        self.search_engine = ProductSearch(catalog.products)
        self.load_s = {**catalog.load_s, "search_index": time.perf_counter() - start}
        self.show_attrs = show_attrs
        if nouns is None:
            self.nouns, self.noun_tagger = noun_extractor(spacy_model)
        else:
            self.nouns, self.noun_tagger = nouns, "custom"
        if option_rule not in OPTION_RULES:
            raise ValueError(f"unknown option rule {option_rule!r}; one of {OPTION_RULES}")
        self.option_rule = option_rule
        if observation not in OBSERVATIONS:
            raise ValueError(f"unknown observation {observation!r}; one of {OBSERVATIONS}")
        self.observation = observation
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._table_lock = threading.Lock()
        self._rng = random.Random(seed)
        weights = getattr(catalog.goals, "weights", None)  # SyntheticGoals keeps them in an array
        if weights is None:
            weights = [float(g.get("weight", 1.0)) for g in catalog.goals]
        self._cum_weights = np.cumsum(np.asarray(weights, dtype=np.float64))  # what random.choices sums, once

    # ---------------------------------------------------------------- sessions

    @property
    def num_sessions(self) -> int:
        return len(self._sessions)

    def _goal(self, goal_index: int | None) -> tuple[int, dict[str, Any]]:
        goals = self.catalog.goals
        if goal_index is None:  # WebShop draws a goal weighted by its attributes' rarity
            with self._table_lock:
                goal_index = self._rng.choices(range(len(goals)), cum_weights=self._cum_weights)[0]
        if isinstance(goal_index, bool) or not isinstance(goal_index, int) or not 0 <= goal_index < len(goals):
            raise BadGoal(
                f"goal_index {goal_index!r} is out of range: this shop has {len(goals)} goals (0-{len(goals) - 1})"
            )
        return goal_index, goals[goal_index]

    def create(self, goal_index: int | None = None) -> tuple[str, StepResult]:
        """A new session on the search page; the oldest session is dropped when ``max_sessions`` are open."""
        index, goal = self._goal(goal_index)
        session_id = uuid.uuid4().hex
        with self._table_lock:
            while len(self._sessions) >= self.max_sessions:
                self._sessions.popitem(last=False)
            self._sessions[session_id] = Session(index, goal)
        return session_id, self.observe(session_id)

    def _get(self, session_id: str) -> Session:
        with self._table_lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        return session

    def reset(self, session_id: str, goal_index: int | None = None) -> StepResult:
        """Start the session over on the search page, on ``goal_index`` (or a drawn goal)."""
        self._get(session_id)
        index, goal = self._goal(goal_index)
        with self._table_lock:
            if session_id not in self._sessions:  # closed meanwhile
                raise UnknownSession(session_id)
            self._sessions[session_id] = Session(index, goal)
        return self.observe(session_id)

    def close(self, session_id: str) -> None:
        with self._table_lock:
            if self._sessions.pop(session_id, None) is None:
                raise UnknownSession(session_id)

    def observe(self, session_id: str) -> StepResult:
        session = self._get(session_id)
        with session.lock:
            return self._result(session, "", 0.0)

    def goal_of(self, session_id: str) -> dict[str, Any]:
        return self._get(session_id).goal

    # ---------------------------------------------------------------- acting

    def step(self, session_id: str, action: str) -> StepResult:
        """Apply one ``search[...]`` or ``click[...]`` action; a bad one leaves the page as it was and says why."""
        session = self._get(session_id)
        with session.lock:
            session.steps += 1
            if session.page == "done":
                error = f"the episode is over: the purchase is done (reward {session.reward}); reset the session"
                return self._result(session, error, 0.0, valid=False)
            error = self._apply(session, action if isinstance(action, str) else "")
            reward = session.reward if session.page == "done" and not error else 0.0
            return self._result(session, error, reward or 0.0, valid=not error)

    def _apply(self, session: Session, action: str) -> str:
        """Change the session's page; return '' on success or the reason the action is invalid."""
        name, arg = parse_action(action)
        if arg is None:
            return f"malformed action {action.strip()[:80]!r}: expected search[keywords] or click[button]"
        if name == "search":
            if session.page != "search":
                return f"there is no search bar on this page: click[{BACK_TO_SEARCH}] first"
            if not arg:
                return "empty search: write keywords inside search[...]"
            session.keywords = arg
            session.results = self.search_engine.search(arg)
            self._show_results(session, 1)
            return ""
        if name != "click":
            return f"unknown action {name!r}: use search[keywords] or click[button]"
        clickables = self.clickables(session)
        if arg not in clickables:
            shown = ", ".join(clickables) if clickables else "none"
            return f"there is no {arg!r} to click on this page (clickable: {shown})"
        self._click(session, arg)
        return ""

    def _show_results(self, session: Session, page: int) -> None:
        session.page, session.results_page = "results", page
        session.asin, session.options, session.sub_page = None, {}, None

    def _click(self, session: Session, target: str) -> None:
        if target == BACK_TO_SEARCH.lower():
            session.page, session.keywords, session.results = "search", "", ()
            session.asin, session.options, session.sub_page = None, {}, None
        elif target == NEXT_PAGE.lower():
            self._show_results(session, session.results_page + 1)
        elif target == PREV_PAGE.lower():
            if session.page == "results":
                self._show_results(session, session.results_page - 1)
            elif session.page == "sub":
                session.page, session.sub_page = "item", None
            else:  # item page → back to its results page
                self._show_results(session, session.results_page)
        elif target == BUY_NOW.lower():
            product = self.catalog.by_asin[session.asin]
            price = self.catalog.prices[session.asin]
            session.reward, session.reward_info = purchase_reward(
                product, session.goal, price, dict(session.options), self.nouns, self.option_rule
            )
            session.page = "done"
        elif session.page == "item" and target in {s.lower() for s in SUB_PAGES}:
            session.page, session.sub_page = "sub", next(s for s in SUB_PAGES if s.lower() == target)
        elif session.page == "results":
            session.page, session.asin, session.options = "item", target.upper(), {}
        else:  # an option value on the item page
            for option_name, values in self.catalog.by_asin[session.asin]["options"].items():
                if target in values:
                    session.options[option_name] = target
                    break

    # ---------------------------------------------------------------- pages

    def _page_products(self, session: Session) -> list[dict[str, Any]]:
        start = (session.results_page - 1) * PRODUCT_WINDOW
        return [self.catalog.by_asin[a] for a in session.results[start : start + PRODUCT_WINDOW]]

    def clickables(self, session: Session) -> list[str]:
        """Lower-cased texts that ``click[...]`` accepts on the session's current page, in page order."""
        if session.page == "results":
            out = [BACK_TO_SEARCH.lower()]
            if session.results_page > 1:
                out.append(PREV_PAGE.lower())
            if session.results_page * PRODUCT_WINDOW < len(session.results) or self.observation == "webshop":
                out.append(NEXT_PAGE.lower())  # WebShop always offers it (past the last page: an empty page)
            return out + [p["asin"].lower() for p in self._page_products(session)]
        if session.page == "item":
            product = self.catalog.by_asin[session.asin]
            values = [v for vs in product["options"].values() for v in vs]
            subs = [s.lower() for s in SUB_PAGES if s != "Attributes" or self.show_attrs]
            return [BACK_TO_SEARCH.lower(), PREV_PAGE.lower(), *dict.fromkeys(values), *subs, BUY_NOW.lower()]
        if session.page == "sub":
            return [BACK_TO_SEARCH.lower(), PREV_PAGE.lower()]
        return []

    def render(self, session: Session) -> str:
        """The current page as text: WebShop's ``text`` observation, or the annotated variant (``observation``)."""
        webshop = self.observation == "webshop"
        instruction = ["Instruction:", session.goal["instruction_text"]]
        if session.page == "search":
            return SEP.join(["WebShop", *instruction, "Search"])
        if session.page == "done":
            if webshop:
                return self._done_page(session)
            return SEP.join(["Thank you for shopping with us!", "Your score (min 0.0, max 1.0)", str(session.reward)])
        parts = [*instruction, BACK_TO_SEARCH]
        if session.page == "results":
            total = len(session.results)
            parts.append(f"Page {session.results_page} (Total results: {total})")
            if session.results_page > 1:
                parts.append(PREV_PAGE)
            if webshop or session.results_page * PRODUCT_WINDOW < total:
                parts.append(NEXT_PAGE)
            for product in self._page_products(session):
                parts += [product["asin"], product["Title"], product["Price"]]
            return SEP.join(parts)
        product = self.catalog.by_asin[session.asin]
        parts.append(PREV_PAGE)
        if session.page == "item":
            for option_name, values in product["options"].items():
                parts += [option_name, *values]
            parts += [product["Title"], f"Price: {product['Price']}", f"Rating: {product['Rating']}"]
            parts += [s for s in SUB_PAGES if s != "Attributes" or self.show_attrs]
            parts.append(BUY_NOW)
            if webshop:
                return SEP.join(parts)
            clicked = "".join(f"You have clicked {v}.\n" for v in session.options.values())
            return clicked + SEP.join(parts)
        if session.sub_page == "Description":
            if product["Description"]:  # WebShop's template writes an empty description as no text at all
                parts.append(product["Description"].strip())
            elif not webshop:
                parts.append("No Description")
        elif session.sub_page == "Features":
            if webshop:
                parts += [str(b).strip() for b in product["BulletPoints"]]
            else:
                parts += [b.strip() for b in product["BulletPoints"] if b and b.strip()] or ["No Features"]
        elif session.sub_page == "Reviews":
            for review in product["Reviews"]:
                parts += [f'"{review["title"]}"', str(review["score"]), review["body"]]
            if not product["Reviews"] and not webshop:
                parts.append("No reviews found")
        elif webshop:
            parts += [str(a).strip() for a in product["Attributes"]]
            parts += [str(v).strip() for v in (product["category"], product["query"], product["product_category"]) if v]
        else:
            parts += product["Attributes"]
        return SEP.join(parts)

    @staticmethod
    def _done_page(session: Session) -> str:
        """WebShop's purchase page as its text environment renders it (the template's fields it does not fill print as
        ``None`` or nothing)."""
        options = json.dumps(dict(session.options), sort_keys=True)  # as Jinja's tojson writes it, HTML-safe
        for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027")):
            options = options.replace(char, escaped)
        purchased = ["Purchased", "asin", session.asin, "options", options, "attrs", "None", "category", "None"]
        purchased += ["query", "None", "product category", "None"]
        target = ["Target", "asin", "options", "attrs", "price upper", "instuction text", "category"]
        target += ["product category", "query", "Goal", "None"]
        reward = ["Reward", "Your score (min 0.0, max 1.0)", str(session.reward), "Reward Details", "None"]
        head = ["Thank you for shopping with us!", "Your code:", "None", "(Paste it in your MTurk interface.)"]
        return SEP.join([*head, *purchased, *target, *reward])

    def _result(self, session: Session, error: str, reward: float, *, valid: bool = True) -> StepResult:
        page = self.render(session)
        observation = f"Invalid action: {error}.\n{page}" if error else page
        info: dict[str, Any] = {"page": session.page, "goal_index": session.goal_index, "steps": session.steps}
        if session.page == "done":
            info.update(asin=session.asin, options=dict(session.options), reward_info=session.reward_info)
            info["final_reward"] = session.reward
        return StepResult(
            observation=observation,
            reward=float(reward),
            done=session.page == "done",
            valid=valid,
            info=info,
            available_actions={"has_search_bar": session.page == "search", "clickables": self.clickables(session)},
        )
