"""WebShop's data: products, their attributes, prices and the goals (instructions) built from them.

Reads the files users download for WebShop (``items_shuffle_1000.json`` / ``items_shuffle.json`` raw products,
``items_ins_v2_1000.json`` / ``items_ins_v2.json`` attributes and synthetic instructions, ``items_human_ins.json``
human instructions) and the pre-processed ``documents.jsonl`` (``{id, contents, product}``, WebShop's search-index
input). Products are normalised exactly as WebShop's ``load_products`` does; goals exactly as its
``get_synthetic_goals`` / ``get_human_goals``. WebShop draws prices and price limits from the unseeded global
``random``; here one seeded generator makes a server reproducible.
"""

from __future__ import annotations

import importlib.resources
import itertools
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

BUNDLED_DIR = Path(str(importlib.resources.files("env_servers.webshop") / "bundled"))
BUNDLED_PRODUCTS = BUNDLED_DIR / "documents.jsonl"
BUNDLED_ATTRIBUTES = BUNDLED_DIR / "items_ins_v2_1000.json"

PRICE_RANGE = [10.0 * i for i in range(1, 100)]  # WebShop's price limits
GOAL_SHUFFLE_SEED = 233  # WebShop shuffles its goal list with this seed, so goal i is the same goal everywhere


class DataError(ValueError):
    """A data file is missing or not in a format WebShop uses."""


def _read_json_or_jsonl(path: Path) -> Any:
    if not path.exists():
        raise DataError(f"file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
        return rows
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None


def parse_pricing(pricing: Any) -> tuple[list[float], str]:
    """WebShop's price parsing: ``"$12.99"`` or ``"$9.99 - $19.99"`` to ``([low, high], "$9.99 to $19.99")``."""
    if isinstance(pricing, list) and pricing:
        values = [float(p) for p in pricing][:2]
    elif isinstance(pricing, str) and pricing.strip():
        values = []
        for part in pricing.split("$")[1:]:
            try:
                values.append(float(Decimal(re.sub(r"[^\d.]", "", part))))
            except InvalidOperation:
                continue
        values = values[:2]
    else:
        values = []
    if not values:
        return [100.0], "$100.0"
    if len(values) == 1:
        return values, f"${values[0]}"
    return values, f"${values[0]} to ${values[1]}"


def normalize_raw_product(raw: dict[str, Any], reviews: dict[str, tuple[list, Any]]) -> dict[str, Any]:
    """One raw scraped product (WebShop's ``items_shuffle*.json``) in the shape its server uses."""
    asin = raw["asin"]
    product = dict(raw)
    product["Title"] = raw.get("name", "")
    product["Description"] = raw.get("full_description") or ""
    product_reviews, rating = reviews.get(asin, ([], "N.A."))
    product["Reviews"] = [
        {
            "title": r.get("title", ""),
            "score": r.get("score", r.get("stars", 0)),
            "body": r.get("body", r.get("review", "")),
        }
        for r in product_reviews
    ]
    product["Rating"] = rating
    bullets = raw.get("small_description")
    product["BulletPoints"] = bullets if isinstance(bullets, list) else [bullets or ""]
    product["pricing"], product["Price"] = parse_pricing(raw.get("pricing"))
    options: dict[str, list[str]] = {}
    option_to_image: dict[str, str | None] = {}
    for name, contents in (raw.get("customization_options") or {}).items():
        if contents is None:
            continue
        values = []
        for content in contents:
            value = content["value"].strip().replace("/", " | ").lower()
            values.append(value)
            option_to_image[value] = content.get("image")
        options[name.lower()] = values
    product["options"] = options
    product["option_to_image"] = option_to_image
    images = raw.get("images") or [""]
    product["MainImage"] = images[0]
    product["query"] = (raw.get("query") or "").lower().strip()
    return product


def _is_processed(product: dict[str, Any]) -> bool:
    return "Title" in product and isinstance(product.get("options"), dict) and isinstance(product.get("pricing"), list)


def product_search_text(product: dict[str, Any]) -> str:
    """The text WebShop indexes for search: title, description, first bullet point and options, lower-cased."""
    options = ", and ".join(f"{name}: {', '.join(values)}" for name, values in product["options"].items())
    bullets = product.get("BulletPoints") or [""]
    return " ".join([product["Title"], product["Description"], bullets[0] or "", options]).lower()


@dataclass
class Catalog:
    """Products by ASIN (in file order), their prices, and the goals the shop can assign."""

    products: list[dict[str, Any]]
    prices: dict[str, float]
    goals: list[dict[str, Any]]
    human_goals: bool
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_asin = {p["asin"]: p for p in self.products}


def load_products(
    products_path: str | Path, attributes_path: str | Path, *, reviews_path: str | Path | None = None
) -> list[dict[str, Any]]:
    """Products as WebShop's server holds them, with ``Attributes`` and the synthetic instruction attached."""
    products_path, attributes_path = Path(products_path), Path(attributes_path)
    raw_items = _read_json_or_jsonl(products_path)
    if not isinstance(raw_items, list):
        raise DataError(f"{products_path}: expected a list of products (WebShop's items_shuffle*.json) or JSONL")
    attributes = _read_json_or_jsonl(attributes_path)
    if not isinstance(attributes, dict):
        raise DataError(f"{attributes_path}: expected an object asin -> {{attributes, instruction, ...}}")
    reviews: dict[str, tuple[list, Any]] = {}
    if reviews_path is not None:
        for row in _read_json_or_jsonl(Path(reviews_path)):
            reviews[row["asin"]] = (row.get("reviews") or [], row.get("average_rating", "N.A."))

    products, seen = [], set()
    for i, item in enumerate(raw_items):
        if isinstance(item, dict) and "product" in item and isinstance(item["product"], dict):
            item = item["product"]  # documents.jsonl: {id, contents, product}
        if not isinstance(item, dict) or "asin" not in item:
            raise DataError(f"{products_path}: item {i} is not a product (no 'asin')")
        asin = str(item["asin"])
        if asin == "nan" or len(asin) > 10 or asin in seen:  # as WebShop skips them
            continue
        seen.add(asin)
        missing = [k for k in ("category", "query", "product_category") if k not in item]
        if missing:
            raise DataError(f"{products_path}: product {asin} lacks {', '.join(missing)}")
        product = dict(item) if _is_processed(item) else normalize_raw_product(item, reviews)
        product["query"] = (product.get("query") or "").lower().strip()
        entry = attributes.get(asin) or {}
        product["Attributes"] = entry.get("attributes") or ["DUMMY_ATTR"]
        product["instruction_text"] = entry.get("instruction")
        product["instruction_attributes"] = entry.get("instruction_attributes")
        product.setdefault("Reviews", [])
        product.setdefault("Rating", "N.A.")
        products.append(product)
    if not products:
        raise DataError(f"{products_path}: no products")
    return products


def product_prices(products: list[dict[str, Any]], rng: random.Random) -> dict[str, float]:
    """WebShop's ``generate_product_prices``: a fixed price, or a uniform draw inside a price range."""
    prices = {}
    for product in products:
        pricing = product["pricing"]
        if not pricing:
            prices[product["asin"]] = 100.0
        elif len(pricing) == 1:
            prices[product["asin"]] = pricing[0]
        else:
            prices[product["asin"]] = rng.uniform(*pricing[:2])
    return prices


def _price_limit(price: float, rng: random.Random) -> tuple[float, str]:
    price_range = [p for p in PRICE_RANGE if p > price][:4]
    if len(price_range) >= 2:
        _, upper = sorted(rng.sample(price_range, 2))
        return upper, f", and price lower than {upper:.2f} dollars"
    return 1000000, ""


def synthetic_goals(products: list[dict[str, Any]], prices: dict[str, float], rng: random.Random) -> list[dict]:
    """WebShop's ``get_synthetic_goals``: one goal per option combination of each product with an instruction."""
    goals: list[dict[str, Any]] = []
    attribute_counts: dict[str, int] = defaultdict(int)
    for product in products:
        if not product.get("instruction_text"):
            continue
        attributes = product.get("instruction_attributes") or []
        if not attributes:
            raise DataError(f"product {product['asin']} has an instruction but no instruction_attributes")
        price_upper, price_text = _price_limit(prices[product["asin"]], rng)
        names = sorted(product["options"])
        for combination in itertools.product(*(product["options"][n] for n in names)):
            goal_options = dict(zip(names, combination, strict=True))
            option_text = ", and ".join(f"{k}: {v}" for k, v in goal_options.items())
            option_text = " with " + option_text if option_text else ""
            goals.append(
                {
                    "asin": product["asin"],
                    "category": product["category"],
                    "query": product["query"],
                    "name": product["Title"],
                    "product_category": product["product_category"],
                    "instruction_text": f"{product['instruction_text']}{option_text}{price_text}",
                    "attributes": attributes,
                    "price_upper": price_upper,
                    "goal_options": goal_options,
                }
            )
            for attribute in attributes:
                attribute_counts[attribute] += 1
    for goal in goals:
        goal["weight"] = sum(1.0 / attribute_counts[a] for a in goal["attributes"]) / len(goal["attributes"])
    return goals


def human_goals(
    products: list[dict[str, Any]], prices: dict[str, float], instructions: dict[str, Any], rng: random.Random
) -> list[dict]:
    """WebShop's ``get_human_goals``: one goal per human-written instruction (those with attributes)."""
    goals = []
    for product in products:
        for entry in instructions.get(product["asin"]) or []:
            attributes = entry.get("instruction_attributes") or []
            if not attributes:
                continue
            price_upper, price_text = _price_limit(prices[product["asin"]], rng)
            goals.append(
                {
                    "asin": product["asin"],
                    "category": product["category"],
                    "query": product["query"],
                    "name": product.get("name", product["Title"]),
                    "product_category": product["product_category"],
                    "instruction_text": entry["instruction"].strip(".") + price_text,
                    "attributes": attributes,
                    "price_upper": price_upper,
                    "goal_options": entry.get("instruction_options") or [],
                    "weight": 1,
                }
            )
    return goals


def load_catalog(
    products_path: str | Path | None = None,
    attributes_path: str | Path | None = None,
    *,
    human_goals_path: str | Path | None = None,
    reviews_path: str | Path | None = None,
    seed: int = 0,
) -> Catalog:
    """Products, prices and goals; the bundled 100-product subset when no paths are given."""
    products_path = Path(products_path) if products_path else BUNDLED_PRODUCTS
    attributes_path = Path(attributes_path) if attributes_path else BUNDLED_ATTRIBUTES
    products = load_products(products_path, attributes_path, reviews_path=reviews_path)
    rng = random.Random(seed)
    prices = product_prices(products, rng)
    if human_goals_path is not None:
        instructions = _read_json_or_jsonl(Path(human_goals_path))
        if not isinstance(instructions, dict):
            raise DataError(f"{human_goals_path}: expected an object asin -> [instructions]")
        goals = human_goals(products, prices, instructions, rng)
    else:
        goals = synthetic_goals(products, prices, rng)
    if not goals:
        raise DataError("no goals: no product has an instruction (check the attributes / human goals file)")
    random.Random(GOAL_SHUFFLE_SEED).shuffle(goals)
    sources = {"products": str(products_path), "attributes": str(attributes_path)}
    if human_goals_path is not None:
        sources["human_goals"] = str(human_goals_path)
    return Catalog(products, prices, goals, human_goals_path is not None, sources)
