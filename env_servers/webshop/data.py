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
import json
import math
import random
import re
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from tqdm import tqdm

BUNDLED_DIR = Path(str(importlib.resources.files("env_servers.webshop") / "bundled"))
BUNDLED_PRODUCTS = BUNDLED_DIR / "documents.jsonl"
BUNDLED_ATTRIBUTES = BUNDLED_DIR / "items_ins_v2_1000.json"

PRICE_RANGE = [10.0 * i for i in range(1, 100)]  # WebShop's price limits
GOAL_SHUFFLE_SEED = 233  # WebShop shuffles its goal list with this seed, so goal i is the same goal everywhere


class DataError(ValueError):
    """A data file is missing or not in a format WebShop uses."""


def _read_json_or_jsonl(path: Path) -> Any:
    """A small data file (attributes, human instructions, reviews) whole: a JSON value, or a JSONL file's rows."""
    if not path.exists():
        raise DataError(f"file not found: {path}")
    if path.suffix == ".jsonl":
        return list(_jsonl_rows(path))
    try:
        with path.open("rb") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None


def _jsonl_rows(path: Path) -> Iterator[Any]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not JSON ({exc.msg})") from None


def iter_product_items(path: Path) -> Iterator[Any]:
    """The items of a product file one at a time, never the whole file in memory: WebShop's full
    ``items_shuffle.json`` is a 5 GB JSON array, read here with ijson's C parser; JSONL line by line."""
    if not path.exists():
        raise DataError(f"file not found: {path}")
    if path.suffix == ".jsonl":
        yield from _jsonl_rows(path)
        return
    import ijson

    with path.open("rb") as f:
        head = f.read(4096).lstrip()
        if head[:1] != b"[":
            raise DataError(f"{path}: expected a list of products (WebShop's items_shuffle*.json) or JSONL")
        f.seek(0)
        try:
            yield from ijson.items(f, "item", use_float=True)
        except ijson.JSONError as exc:
            raise DataError(f"{path}: not JSON ({exc})") from None


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


class ProductStore(Sequence[dict[str, Any]]):
    """Products in file order, each kept as compressed JSON and decoded when asked for (recent ones cached).

    WebShop holds its 1.18M products as Python dicts (tens of GB); compressed they take ~1.4 kB each, so the full set
    fits in ~2 GB and a page decodes the few products it shows (~40 us each). Decoded products are shared: read only.
    """

    def __init__(self, cache_size: int = 4096):
        self._blobs: list[bytes] = []
        self._index: dict[str, int] = {}
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder()
        self._get = lru_cache(maxsize=cache_size)(self._decode)

    def append(self, product: dict[str, Any]) -> None:
        self._index[product["asin"]] = len(self._blobs)
        self._blobs.append(zlib.compress(self._encoder.encode(product), 1))

    def _decode(self, i: int) -> dict[str, Any]:
        return self._decoder.decode(zlib.decompress(self._blobs[i]))

    def __len__(self) -> int:
        return len(self._blobs)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(len(self)))]
        return self._get(range(len(self))[i])

    def __iter__(self) -> Iterator[dict[str, Any]]:  # a full pass decodes without filling the cache
        return (self._decode(i) for i in range(len(self)))

    def index_of(self, asin: str) -> int:
        return self._index[asin]

    def __contains__(self, asin: object) -> bool:  # type: ignore[override]
        return asin in self._index

    @property
    def nbytes(self) -> int:
        """Compressed bytes held."""
        return sum(map(len, self._blobs))


class ProductsByAsin(Mapping[str, dict[str, Any]]):
    """``catalog.by_asin[asin]``: a product of a :class:`ProductStore` by its ASIN."""

    def __init__(self, store: ProductStore):
        self._store = store

    def __getitem__(self, asin: str) -> dict[str, Any]:
        return self._store[self._store.index_of(asin)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._store._index)

    def __len__(self) -> int:
        return len(self._store)


@dataclass
class Catalog:
    """Products by ASIN (in file order), their prices, and the goals the shop can assign."""

    products: Sequence[dict[str, Any]]
    prices: dict[str, float]
    goals: Sequence[dict[str, Any]]
    human_goals: bool
    sources: dict[str, str] = field(default_factory=dict)
    load_s: dict[str, float] = field(default_factory=dict)  # seconds spent reading products and making goals

    def __post_init__(self) -> None:
        if isinstance(self.products, ProductStore):
            self.by_asin: Mapping[str, dict[str, Any]] = ProductsByAsin(self.products)
        else:
            self.by_asin = {p["asin"]: p for p in self.products}


def _load_into_store(
    products_path: Path, attributes: dict[str, Any], reviews: dict[str, tuple[list, Any]], rng: random.Random | None
) -> tuple[ProductStore, dict[str, float]]:
    """One pass over the product file: normalise each product, attach its attributes, draw its price (WebShop's
    ``generate_product_prices``, in file order, when ``rng`` is given) and store it compressed."""
    store, prices = ProductStore(), {}
    items = iter_product_items(products_path)
    for i, item in enumerate(tqdm(items, desc="products", unit=" products", disable=None, mininterval=5)):
        if isinstance(item, dict) and "product" in item and isinstance(item["product"], dict):
            item = item["product"]  # documents.jsonl: {id, contents, product}
        if not isinstance(item, dict) or "asin" not in item:
            raise DataError(f"{products_path}: item {i} is not a product (no 'asin')")
        asin = str(item["asin"])
        if asin == "nan" or len(asin) > 10 or asin in store:  # as WebShop skips them
            continue
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
        store.append(product)
        if rng is not None:
            prices[asin] = _product_price(product, rng)
    if not len(store):
        raise DataError(f"{products_path}: no products")
    return store, prices


def _read_attributes(attributes_path: Path, reviews_path: str | Path | None):
    attributes = _read_json_or_jsonl(attributes_path)
    if not isinstance(attributes, dict):
        raise DataError(f"{attributes_path}: expected an object asin -> {{attributes, instruction, ...}}")
    reviews: dict[str, tuple[list, Any]] = {}
    if reviews_path is not None:
        for row in _read_json_or_jsonl(Path(reviews_path)):
            reviews[row["asin"]] = (row.get("reviews") or [], row.get("average_rating", "N.A."))
    return attributes, reviews


def load_products(
    products_path: str | Path, attributes_path: str | Path, *, reviews_path: str | Path | None = None
) -> ProductStore:
    """Products as WebShop's server holds them, with ``Attributes`` and the synthetic instruction attached."""
    attributes, reviews = _read_attributes(Path(attributes_path), reviews_path)
    return _load_into_store(Path(products_path), attributes, reviews, None)[0]


def _product_price(product: dict[str, Any], rng: random.Random) -> float:
    """WebShop's ``generate_product_prices`` for one product: a fixed price, or a uniform draw inside a range."""
    pricing = product["pricing"]
    if not pricing:
        return 100.0
    if len(pricing) == 1:
        return pricing[0]
    return rng.uniform(*pricing[:2])


def _price_limit(price: float, rng: random.Random) -> tuple[float, str]:
    price_range = [p for p in PRICE_RANGE if p > price][:4]
    if len(price_range) >= 2:
        _, upper = sorted(rng.sample(price_range, 2))
        return upper, f", and price lower than {upper:.2f} dollars"
    return 1000000, ""


class SyntheticGoals(Sequence[dict[str, Any]]):
    """WebShop's ``get_synthetic_goals`` (one goal per option combination of each product with an instruction) in
    WebShop's shuffled order, made when asked for: a goal is a product, an option combination and a price limit.

    WebShop builds every goal as a dict (millions for its full product set); here a goal is 24 bytes in arrays and
    ``goals[i]`` gives the same dict WebShop's list holds at ``i``. Weights are WebShop's (rarer attributes weigh more).
    """

    def __init__(self, store: ProductStore, prices: dict[str, float], rng: random.Random):
        self._store = store
        attribute_counts: dict[str, int] = defaultdict(int)
        indices, counts, limits, attribute_lists = [], [], [], []
        self._price_text: dict[int, str] = {}
        for index, product in enumerate(store):
            if not product.get("instruction_text"):
                continue
            attributes = product.get("instruction_attributes") or []
            if not attributes:
                raise DataError(f"product {product['asin']} has an instruction but no instruction_attributes")
            upper, self._price_text[index] = _price_limit(prices[product["asin"]], rng)
            combinations = math.prod(len(values) for values in product["options"].values())
            indices.append(index), counts.append(combinations), limits.append(upper), attribute_lists.append(attributes)
            for attribute in attributes:
                attribute_counts[attribute] += combinations
        weights = [sum(1.0 / attribute_counts[a] for a in attrs) / len(attrs) for attrs in attribute_lists]
        counts_array = np.asarray(counts, dtype=np.int64)
        total = int(counts_array.sum())
        starts = np.repeat(np.cumsum(counts_array) - counts_array, counts_array)
        order = list(range(total))
        random.Random(GOAL_SHUFFLE_SEED).shuffle(order)  # WebShop's shuffle of its goal list (only its length counts)
        shuffled = np.asarray(order, dtype=np.int64)
        del order
        self._product = np.repeat(np.asarray(indices, dtype=np.int32), counts_array)[shuffled]
        self._combination = (np.arange(total, dtype=np.int64) - starts).astype(np.int32)[shuffled]
        self._price_upper = np.repeat(np.asarray(limits, dtype=np.float64), counts_array)[shuffled]
        self.weights = np.repeat(np.asarray(weights, dtype=np.float64), counts_array)[shuffled]

    def __len__(self) -> int:
        return len(self._product)

    def _goal(self, i: int) -> dict[str, Any]:
        index = int(self._product[i])
        product = self._store[index]
        names = sorted(product["options"])
        goal_options, rest = {}, int(self._combination[i])
        for name in reversed(names):  # itertools.product order: the last name varies fastest
            values = product["options"][name]
            rest, position = divmod(rest, len(values))
            goal_options[name] = values[position]
        goal_options = {name: goal_options[name] for name in names}
        option_text = ", and ".join(f"{k}: {v}" for k, v in goal_options.items())
        option_text = " with " + option_text if option_text else ""
        upper = float(self._price_upper[i])
        return {
            "asin": product["asin"],
            "category": product["category"],
            "query": product["query"],
            "name": product["Title"],
            "product_category": product["product_category"],
            "instruction_text": f"{product['instruction_text']}{option_text}{self._price_text[index]}",
            "attributes": product["instruction_attributes"],
            "price_upper": int(upper) if upper == 1000000 else upper,
            "goal_options": goal_options,
            "weight": float(self.weights[i]),
        }

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._goal(j) for j in range(*i.indices(len(self)))]
        return self._goal(range(len(self))[i])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]


def human_goals(
    products: Sequence[dict[str, Any]], prices: dict[str, float], instructions: dict[str, Any], rng: random.Random
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
    random.Random(GOAL_SHUFFLE_SEED).shuffle(goals)
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
    attributes, reviews = _read_attributes(attributes_path, reviews_path)
    instructions = None
    if human_goals_path is not None:
        instructions = _read_json_or_jsonl(Path(human_goals_path))
        if not isinstance(instructions, dict):
            raise DataError(f"{human_goals_path}: expected an object asin -> [instructions]")
    rng = random.Random(seed)
    start = time.perf_counter()
    products, prices = _load_into_store(products_path, attributes, reviews, rng)
    del attributes
    load_s = {"products": time.perf_counter() - start}
    start = time.perf_counter()
    if instructions is not None:
        goals: Sequence[dict[str, Any]] = human_goals(products, prices, instructions, rng)
    else:
        goals = SyntheticGoals(products, prices, rng)
    load_s["goals"] = time.perf_counter() - start
    if not len(goals):
        raise DataError("no goals: no product has an instruction (check the attributes / human goals file)")
    sources = {"products": str(products_path), "attributes": str(attributes_path)}
    if human_goals_path is not None:
        sources["human_goals"] = str(human_goals_path)
    return Catalog(products, prices, goals, human_goals_path is not None, sources, load_s)
