"""Write ``human_goals/``: a human-instruction file in WebShop's ``items_human_ins.json`` format for the bundled
products, and what WebShop's own code makes of it (``reference.json``): its product prices, its human goals in its
shuffled order (``load_products`` + ``get_goals`` + ``random.seed(233); random.shuffle``, as its ``SimServer`` does)
and its ``get_reward`` for three purchases of each goal.

    python tests/env_servers/webshop/make_reference_human_goals.py --webshop /path/to/WebShop

WebShop's real ``items_human_ins.json`` (12,087 instructions written by crowd workers) is a separate download and not
redistributed here, so the instructions are generated (seeded) in its format: several per product, some without
attributes (WebShop skips those), option values as people write them ("navy blue" for "navy | blue", "large" for
"x-large", values the product does not have), trailing dots (stripped), and ASINs that are not in the catalog. Nothing
of WebShop is copied: its modules are imported from the checkout, with its Lucene searcher (Java) stubbed out, since
goals and rewards do not search. WebShop draws prices from the global ``random``: seeding it with the project's
``--seed`` gives the same draws as the project's seeded generator, which the test checks.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "human_goals"
INSTRUCTIONS = OUT_DIR / "items_human_ins.json"
REFERENCE = OUT_DIR / "reference.json"
ROOT = HERE.parents[2]
SEED = 0
RAW_FIELDS = ("Title", "Description", "BulletPoints", "Price", "options", "option_to_image", "MainImage", "Attributes")


def human_instructions(products: list[dict], attributes: dict, seed: int = 1) -> dict[str, list[dict]]:
    """Instructions in ``items_human_ins.json``'s shape (asin -> [{asin, instruction, instruction_attributes,
    instruction_options}]) for the bundled products, and two ASINs the catalog does not have."""
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {}
    for product in products:
        asin = product["asin"]
        pool = list((attributes.get(asin) or {}).get("attributes") or [])
        entries = []
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            wanted_attributes = rng.sample(pool, k=rng.randint(0, min(3, len(pool)))) if pool else []
            options = []
            for values in product["options"].values():
                if values and rng.random() < 0.7:
                    value = rng.choice(values)
                    roll = rng.random()
                    if roll < 0.15:
                        value = value.replace(" | ", " ")  # "navy | blue" -> "navy blue"
                    elif roll < 0.25:
                        value = value.removeprefix("x-")  # "x-large" -> "large"
                    elif roll < 0.3:
                        value = "crimson red"  # a value the product does not have
                    options.append(value)
            words = product["query"] or product["Title"].lower()
            text = f"i am looking for {words}"
            if wanted_attributes:
                text += " that is " + " and ".join(wanted_attributes)
            if options:
                text += " in " + ", ".join(options)
            text += rng.choice(["", ".", ".."])
            entries.append(
                {
                    "asin": asin,
                    "instruction": text,
                    "instruction_attributes": wanted_attributes,
                    "instruction_options": options,
                }
            )
        if entries:
            out[asin] = entries
    for asin in ("B000000000", "B0MISSING1"):
        out[asin] = [{"asin": asin, "instruction": "i want socks", "instruction_attributes": ["wool"],
                      "instruction_options": []}]  # fmt: skip
    return out


def purchases(catalog, seed: int = 0) -> list[dict]:
    """Per goal: the goal's product with options picked from the goal's values where the product has them
    (``matching``), with its first options (``first_options``), and a random product (``random``)."""
    rng = random.Random(seed)
    asins = [p["asin"] for p in catalog.products]
    out = []
    for index, goal in enumerate(catalog.goals):
        product = catalog.by_asin[goal["asin"]]
        price = catalog.prices[goal["asin"]]
        matching = {}
        for name, values in product["options"].items():
            hits = [v for v in values if v in goal["goal_options"]]
            if hits:
                matching[name] = hits[0]
            elif values:
                matching[name] = values[0]
        first = {name: values[0] for name, values in product["options"].items() if values}
        out.append(dict(goal_index=index, kind="matching", asin=goal["asin"], options=matching, price=price))
        out.append(dict(goal_index=index, kind="first_options", asin=goal["asin"], options=first, price=price))
        alt = rng.choice(asins)
        options = {name: rng.choice(values) for name, values in catalog.by_asin[alt]["options"].items() if values}
        out.append(dict(goal_index=index, kind="random", asin=alt, options=options, price=catalog.prices[alt]))
    return out


def goal_view(goal: dict) -> dict:
    keys = ("asin", "category", "query", "name", "product_category", "instruction_text", "attributes", "price_upper",
            "goal_options", "weight")  # fmt: skip
    return {k: goal[k] for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--webshop", required=True, help="a WebShop checkout (github.com/princeton-nlp/WebShop)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    sys.path.insert(1, str(HERE))
    from make_reference_rewards import alias_spacy_model

    from env_servers.webshop.data import BUNDLED_ATTRIBUTES, BUNDLED_PRODUCTS, load_catalog

    spacy_version = alias_spacy_model()
    rows = [json.loads(line)["product"] for line in BUNDLED_PRODUCTS.read_text(encoding="utf-8").splitlines()]
    attributes = json.loads(BUNDLED_ATTRIBUTES.read_text(encoding="utf-8"))
    bundled = load_catalog()  # normalised products, for the instructions' option values
    OUT_DIR.mkdir(exist_ok=True)
    INSTRUCTIONS.write_text(json.dumps(human_instructions(bundled.products, attributes), indent=1) + "\n")

    # WebShop's engine imports pyserini (Java) at module level; goals and rewards never search
    lucene = types.ModuleType("pyserini.search.lucene")
    lucene.LuceneSearcher = object
    for name in ("pyserini", "pyserini.search"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["pyserini.search.lucene"] = lucene
    sys.path.insert(0, str(Path(args.webshop).resolve()))
    from web_agent_site.engine import engine
    from web_agent_site.engine.goal import get_goals, get_reward

    with tempfile.TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "items_shuffle_bundled.json"  # the raw scraped fields, as items_shuffle*.json has them
        raw = [{k: v for k, v in p.items() if k not in RAW_FIELDS} for p in rows]
        for product in raw:  # documents.jsonl keeps the parsed price list; the raw files have the text
            if isinstance(product.get("pricing"), list):
                product["pricing"] = " - ".join(f"${v}" for v in product["pricing"])
        raw_path.write_text(json.dumps(raw))
        engine.DEFAULT_ATTR_PATH, engine.HUMAN_ATTR_PATH = str(BUNDLED_ATTRIBUTES), str(INSTRUCTIONS)
        random.seed(SEED)
        all_products, by_asin, prices, _ = engine.load_products(str(raw_path), human_goals=True)
        goals = get_goals(all_products, prices, human_goals=True)
        random.seed(233)
        random.shuffle(goals)

    webshop = types.SimpleNamespace(products=all_products, by_asin=by_asin, prices=prices, goals=goals)
    bought = purchases(webshop)
    for row in bought:
        goal, product = goals[row["goal_index"]], by_asin[row["asin"]]
        row["reward"] = float(get_reward(product, goal, row["price"], row["options"]))
    header = {
        "source": "WebShop load_products + get_goals(human_goals=True) + random.seed(233) shuffle + get_reward, "
        f"on the bundled products with human_goals/items_human_ins.json, random.seed({SEED})",
        "spacy": spacy_version,
        "generator": "tests/env_servers/webshop/make_reference_human_goals.py",
    }
    reference = {"about": header, "seed": SEED, "prices": prices, "goals": [goal_view(g) for g in goals],
                 "purchases": bought}  # fmt: skip
    REFERENCE.write_text(json.dumps(reference, indent=0) + "\n")
    print(f"wrote {len(goals)} WebShop human goals and {len(bought)} rewards to {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
