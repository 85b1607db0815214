"""WebShop's data: price parsing, raw product files, synthetic and human goals, seeding, errors, the bundled subset."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from env_servers.webshop.data import (
    BUNDLED_ATTRIBUTES,
    BUNDLED_PRODUCTS,
    Catalog,
    DataError,
    load_catalog,
    load_products,
    normalize_raw_product,
    parse_pricing,
)

SOCKS, BOX, TEE = "B000000001", "B000000002", "B000000003"

RAW_PRODUCTS: list[dict[str, Any]] = [
    {
        "asin": SOCKS,
        "name": "Cotton Crew Socks",
        "full_description": "Soft socks for every day.",
        "pricing": "$12.99",
        "small_description": ["Cotton blend", "Machine wash"],
        "customization_options": {
            "Color": [{"value": "Navy/Blue", "image": "http://img/navy.jpg"}, {"value": " Black ", "image": None}],
            "Size": [{"value": "Medium"}, {"value": "Large"}],
        },
        "images": ["http://img/socks.jpg", "http://img/socks2.jpg"],
        "product_category": "Clothing › Men › Socks",
        "category": "fashion",
        "query": "  Men's Socks ",
    },
    {
        "asin": BOX,
        "name": "Gift Box",
        "full_description": None,
        "pricing": "$9.99 - $19.99",
        "small_description": "Just one bullet",
        "customization_options": None,
        "images": [],
        "product_category": "Home › Gifts",
        "category": "home",
        "query": "gift boxes",
    },
    {  # a second copy of the socks: WebShop keeps the first
        "asin": SOCKS,
        "name": "Duplicate Socks",
        "pricing": "$1.00",
        "product_category": "x",
        "category": "x",
        "query": "x",
    },
    {"asin": "nan", "name": "Broken", "product_category": "x", "category": "x", "query": "x"},
    {
        "asin": TEE,
        "name": "Plain Tee",
        "full_description": "A tee.",
        "pricing": "",
        "small_description": [],
        "customization_options": {"Size": [{"value": "Small"}], "Color": None},
        "images": ["http://img/tee.jpg"],
        "product_category": "Clothing › Men › Shirts",
        "category": "fashion",
        "query": "men's t-shirts",
    },
]

ATTRIBUTES = {
    SOCKS: {
        "attributes": ["cotton blend", "machine wash"],
        "instruction": "i need cotton crew socks",
        "instruction_attributes": ["cotton blend", "machine wash"],
    },
    BOX: {"attributes": [], "instruction": "i want a gift box", "instruction_attributes": ["gift box"]},
    TEE: {"attributes": ["cotton"]},  # no instruction: no synthetic goals
}

HUMAN_GOALS = {
    SOCKS: [
        {
            "instruction": "I want navy cotton socks in medium.",
            "instruction_attributes": ["cotton blend"],
            "instruction_options": ["navy", "medium"],
        },
        {"instruction": "Something vague.", "instruction_attributes": [], "instruction_options": []},
    ],
    TEE: [{"instruction": "a small tee", "instruction_attributes": ["cotton"], "instruction_options": ["small"]}],
    "B0NOTINSHOP": [{"instruction": "ghost", "instruction_attributes": ["x"], "instruction_options": []}],
}


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture()
def raw_files(tmp_path: Path) -> tuple[Path, Path]:
    return write_json(tmp_path / "items_shuffle.json", RAW_PRODUCTS), write_json(
        tmp_path / "items_ins.json", ATTRIBUTES
    )


# ------------------------------------------------------------------ prices


@pytest.mark.parametrize(
    ("pricing", "values", "tag"),
    [
        ("$12.99", [12.99], "$12.99"),
        ("$9.99 - $19.99", [9.99, 19.99], "$9.99 to $19.99"),
        ("$1,299.00", [1299.0], "$1299.0"),
        ("$5.00 - $6.00 - $7.00", [5.0, 6.0], "$5.0 to $6.0"),  # at most two
        ("", [100.0], "$100.0"),
        (None, [100.0], "$100.0"),
        ([], [100.0], "$100.0"),
        ("call for price", [100.0], "$100.0"),  # no '$': nothing parsed
        ([877.8], [877.8], "$877.8"),  # documents.jsonl keeps the parsed list
    ],
)
def test_parse_pricing(pricing: Any, values: list[float], tag: str) -> None:
    assert parse_pricing(pricing) == (values, tag)


# ------------------------------------------------------------------ raw products


def test_raw_products_are_normalised(raw_files: tuple[Path, Path]) -> None:
    products = load_products(*raw_files)
    assert [p["asin"] for p in products] == [SOCKS, BOX, TEE]  # duplicate and 'nan' skipped, file order kept
    socks, box, tee = products
    assert socks["Title"] == "Cotton Crew Socks"  # the first copy, not the duplicate
    assert socks["Description"] == "Soft socks for every day."
    assert socks["BulletPoints"] == ["Cotton blend", "Machine wash"]
    assert socks["options"] == {"color": ["navy | blue", "black"], "size": ["medium", "large"]}
    assert socks["option_to_image"] == {
        "navy | blue": "http://img/navy.jpg",
        "black": None,
        "medium": None,
        "large": None,
    }
    assert socks["pricing"] == [12.99] and socks["Price"] == "$12.99"
    assert socks["MainImage"] == "http://img/socks.jpg"
    assert socks["query"] == "men's socks"
    assert socks["Attributes"] == ["cotton blend", "machine wash"]
    assert socks["instruction_text"] == "i need cotton crew socks"
    assert socks["Reviews"] == [] and socks["Rating"] == "N.A."

    assert box["Description"] == "" and box["BulletPoints"] == ["Just one bullet"]
    assert box["options"] == {} and box["MainImage"] == ""
    assert box["pricing"] == [9.99, 19.99] and box["Price"] == "$9.99 to $19.99"
    assert box["Attributes"] == ["DUMMY_ATTR"]  # empty attribute list, as WebShop fills it

    assert tee["options"] == {"size": ["small"]}  # a null option list is dropped
    assert tee["pricing"] == [100.0] and tee["Price"] == "$100.0"
    assert tee["instruction_text"] is None and tee["Attributes"] == ["cotton"]


def test_reviews_file_is_attached(raw_files: tuple[Path, Path], tmp_path: Path) -> None:
    reviews = tmp_path / "reviews.jsonl"
    row = {"asin": SOCKS, "average_rating": 4.5, "reviews": [{"title": "Great", "stars": 5, "review": "Warm."}]}
    reviews.write_text(json.dumps(row) + "\n", encoding="utf-8")
    socks = load_products(*raw_files, reviews_path=reviews)[0]
    assert socks["Rating"] == 4.5
    assert socks["Reviews"] == [{"title": "Great", "score": 5, "body": "Warm."}]


def test_bundled_documents_match_raw_normalisation() -> None:
    """documents.jsonl holds WebShop's processed products next to the raw fields: normalising those reproduces them."""
    rows = [json.loads(line)["product"] for line in BUNDLED_PRODUCTS.read_text(encoding="utf-8").splitlines()]
    derived = ("Title", "Description", "BulletPoints", "Price", "options", "option_to_image", "MainImage")
    for product in rows:
        raw = {k: v for k, v in product.items() if k not in derived}
        normalised = normalize_raw_product(raw, {})
        for key in (*derived, "pricing", "query"):
            assert normalised[key] == product[key], (product["asin"], key)


# ------------------------------------------------------------------ synthetic goals


def test_synthetic_goals_one_per_option_combination(raw_files: tuple[Path, Path]) -> None:
    catalog = load_catalog(*raw_files, seed=0)
    assert not catalog.human_goals
    socks_goals = [g for g in catalog.goals if g["asin"] == SOCKS]
    box_goals = [g for g in catalog.goals if g["asin"] == BOX]
    assert len(catalog.goals) == 5 and len(socks_goals) == 4 and len(box_goals) == 1  # 2 colours x 2 sizes + 1

    price_upper = socks_goals[0]["price_upper"]
    # price 12.99: WebShop's limits above it are 20, 30, 40, 50; two are drawn and the larger kept
    assert price_upper in (30.0, 40.0, 50.0)
    assert all(g["price_upper"] == price_upper for g in socks_goals)  # one draw per product
    assert catalog.prices[SOCKS] == 12.99
    price_text = f"and price lower than {price_upper:.2f} dollars"
    expected = {
        f"i need cotton crew socks with color: {color}, and size: {size}, {price_text}"
        for color in ("navy | blue", "black")
        for size in ("medium", "large")
    }
    assert {g["instruction_text"] for g in socks_goals} == expected
    assert {tuple(g["goal_options"].items()) for g in socks_goals} == {
        (("color", c), ("size", s)) for c in ("navy | blue", "black") for s in ("medium", "large")
    }
    goal = socks_goals[0]
    assert goal["attributes"] == ["cotton blend", "machine wash"]
    assert goal["name"] == "Cotton Crew Socks" and goal["query"] == "men's socks"
    assert goal["category"] == "fashion" and goal["product_category"] == "Clothing › Men › Socks"
    # weight: each attribute appears in 4 goals -> (1/4 + 1/4) / 2
    assert goal["weight"] == pytest.approx(0.25)

    (box,) = box_goals
    # no options: no ' with ...'; the box's price is drawn in [9.99, 19.99]
    assert 9.99 <= catalog.prices[BOX] <= 19.99
    assert box["goal_options"] == {}
    assert box["instruction_text"] == f"i want a gift box, and price lower than {box['price_upper']:.2f} dollars"
    assert box["weight"] == pytest.approx(1.0)


def test_seeding(raw_files: tuple[Path, Path]) -> None:
    first, again = load_catalog(*raw_files, seed=7), load_catalog(*raw_files, seed=7)
    assert first.goals == again.goals and first.prices == again.prices
    limits = {load_catalog(*raw_files, seed=seed).goals[0]["price_upper"] for seed in range(20)}
    assert len(limits) > 1  # 20 seeds do not all draw the same price limit
    box_prices = {load_catalog(*raw_files, seed=seed).prices[BOX] for seed in range(5)}
    assert len(box_prices) == 5  # a uniform draw in a range


def test_goal_order_does_not_depend_on_the_seed(raw_files: tuple[Path, Path]) -> None:
    """Goals are shuffled with WebShop's fixed seed: goal i is the same product and options for every seed."""
    a, b = load_catalog(*raw_files, seed=1), load_catalog(*raw_files, seed=2)
    assert [(g["asin"], g["goal_options"]) for g in a.goals] == [(g["asin"], g["goal_options"]) for g in b.goals]


# ------------------------------------------------------------------ human goals


def test_human_goals(raw_files: tuple[Path, Path], tmp_path: Path) -> None:
    human = write_json(tmp_path / "items_human_ins.json", HUMAN_GOALS)
    catalog = load_catalog(*raw_files, human_goals_path=human, seed=0)
    assert catalog.human_goals and catalog.sources["human_goals"] == str(human)
    assert len(catalog.goals) == 2  # the entry without attributes and the unknown asin are skipped
    by_asin = {g["asin"]: g for g in catalog.goals}
    socks, tee = by_asin[SOCKS], by_asin[TEE]
    assert socks["instruction_text"].startswith("I want navy cotton socks in medium, and price lower than ")
    assert socks["instruction_text"].endswith(f"{socks['price_upper']:.2f} dollars")
    assert socks["goal_options"] == ["navy", "medium"] and socks["attributes"] == ["cotton blend"]
    assert socks["weight"] == 1 and socks["name"] == "Cotton Crew Socks"
    # the tee costs $100 (no price given): limits 110, 120, 130, 140 -> the larger of two draws
    assert tee["price_upper"] in (120.0, 130.0, 140.0)
    assert tee["instruction_text"] == f"a small tee, and price lower than {tee['price_upper']:.2f} dollars"


# ------------------------------------------------------------------ errors


def test_missing_file(tmp_path: Path, raw_files: tuple[Path, Path]) -> None:
    with pytest.raises(DataError, match="file not found: .*nope.json"):
        load_catalog(tmp_path / "nope.json", raw_files[1])
    with pytest.raises(DataError, match="file not found: .*gone.json"):
        load_catalog(raw_files[0], tmp_path / "gone.json")
    with pytest.raises(DataError, match="file not found: .*human.json"):
        load_catalog(*raw_files, human_goals_path=tmp_path / "human.json")


def test_product_file_not_a_list(tmp_path: Path, raw_files: tuple[Path, Path]) -> None:
    products = write_json(tmp_path / "products.json", {"asin": SOCKS})
    with pytest.raises(DataError, match="expected a list of products"):
        load_catalog(products, raw_files[1])


def test_product_without_query(tmp_path: Path, raw_files: tuple[Path, Path]) -> None:
    product = {k: v for k, v in RAW_PRODUCTS[0].items() if k != "query"}
    products = write_json(tmp_path / "products.json", [product])
    with pytest.raises(DataError, match=f"product {SOCKS} lacks query"):
        load_catalog(products, raw_files[1])


def test_other_malformed_files(tmp_path: Path, raw_files: tuple[Path, Path]) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match="bad.json: not JSON"):
        load_catalog(bad_json, raw_files[1])
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text(json.dumps({"product": RAW_PRODUCTS[0]}) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl:2: not JSON"):
        load_catalog(bad_jsonl, raw_files[1])
    with pytest.raises(DataError, match="item 0 is not a product"):
        load_catalog(write_json(tmp_path / "p.json", [{"name": "no asin"}]), raw_files[1])
    with pytest.raises(DataError, match="expected an object asin"):
        load_catalog(raw_files[0], write_json(tmp_path / "attrs.json", [1, 2]))
    with pytest.raises(DataError, match="no goals"):
        load_catalog(raw_files[0], write_json(tmp_path / "empty_attrs.json", {}))
    with pytest.raises(DataError, match="no products"):
        load_catalog(write_json(tmp_path / "none.json", []), raw_files[1])


# ------------------------------------------------------------------ the bundled subset


def test_bundled_catalog(webshop_catalog: Catalog) -> None:
    catalog = webshop_catalog
    assert len(catalog.products) == 100 and len(catalog.goals) == 501
    assert catalog.sources == {"products": str(BUNDLED_PRODUCTS), "attributes": str(BUNDLED_ATTRIBUTES)}
    with_instruction = [p for p in catalog.products if p["instruction_text"]]
    assert len(with_instruction) == 44
    # one goal per option combination of each product with an instruction
    assert sum(math.prod(len(v) for v in p["options"].values()) for p in with_instruction) == 501
    assert {g["asin"] for g in catalog.goals} == {p["asin"] for p in with_instruction}
    for goal in catalog.goals:
        product = catalog.by_asin[goal["asin"]]
        assert all(product["options"][name].count(value) == 1 for name, value in goal["goal_options"].items())
        assert catalog.prices[goal["asin"]] < goal["price_upper"]
        assert goal["instruction_text"].startswith(product["instruction_text"])
    assert load_catalog(BUNDLED_PRODUCTS, BUNDLED_ATTRIBUTES).goals == catalog.goals  # the default, seed 0


# ------------------------------------------------------------------ compact storage (WebShop's full product set)


def eager_synthetic_goals(products: list[dict[str, Any]], seed: int) -> tuple[dict[str, float], list[dict]]:
    """WebShop's ``generate_product_prices`` + ``get_synthetic_goals`` + seed-233 shuffle, re-derived as WebShop writes
    them (every goal a dict, built at once), with the catalog's seeded generator for WebShop's global ``random``."""
    import itertools
    import random
    from collections import defaultdict

    rng = random.Random(seed)
    prices = {}
    for p in products:
        prices[p["asin"]] = rng.uniform(*p["pricing"][:2]) if len(p["pricing"]) > 1 else p["pricing"][0]
    goals, counts = [], defaultdict(int)
    for p in products:
        if not p["instruction_text"]:
            continue
        limits = [x for x in [10.0 * i for i in range(1, 100)] if x > prices[p["asin"]]][:4]
        upper = sorted(rng.sample(limits, 2))[1] if len(limits) >= 2 else 1000000
        price_text = f", and price lower than {upper:.2f} dollars" if len(limits) >= 2 else ""
        names = sorted(p["options"])
        for combination in itertools.product(*(p["options"][n] for n in names)):
            options = dict(zip(names, combination, strict=True))
            text = ", and ".join(f"{k}: {v}" for k, v in options.items())
            instruction = p["instruction_text"] + (" with " + text if text else "") + price_text
            goal = {"asin": p["asin"], "category": p["category"], "query": p["query"], "name": p["Title"]}
            goal |= {"product_category": p["product_category"], "instruction_text": instruction}
            goal |= {"attributes": p["instruction_attributes"], "price_upper": upper, "goal_options": options}
            goals.append(goal)
            for a in p["instruction_attributes"]:
                counts[a] += 1
    for g in goals:
        g["weight"] = sum(1.0 / counts[a] for a in g["attributes"]) / len(g["attributes"])
    random.Random(233).shuffle(goals)
    return prices, goals


@pytest.mark.parametrize("seed", [0, 3])
def test_goals_made_on_demand_equal_webshops_list(webshop_catalog: Catalog, seed: int) -> None:
    catalog = load_catalog(seed=seed)
    prices, goals = eager_synthetic_goals(list(catalog.products), seed)
    assert catalog.prices == prices
    assert len(catalog.goals) == len(goals) == 501
    assert list(catalog.goals) == goals and catalog.goals == goals
    assert catalog.goals[-1] == goals[-1] and catalog.goals[10:13] == goals[10:13]
    assert list(catalog.goals.weights) == [g["weight"] for g in goals]
    with pytest.raises(IndexError):
        catalog.goals[501]


def test_products_are_stored_compressed(webshop_catalog: Catalog) -> None:
    store = webshop_catalog.products
    rows = [json.loads(line)["product"] for line in BUNDLED_PRODUCTS.read_text(encoding="utf-8").splitlines()]
    assert [p["asin"] for p in store] == [r["asin"] for r in rows]
    assert store[-1] == store[len(store) - 1] and store[:2] == [store[0], store[1]]
    assert webshop_catalog.by_asin[rows[5]["asin"]] == store[5] and rows[5]["asin"] in store
    assert len(webshop_catalog.by_asin) == 100 and "B0NOTHERE0" not in store
    assert store.nbytes < 0.4 * sum(len(json.dumps(p)) for p in store)  # ~1.4 kB a product instead of ~4.9


def test_json_array_is_streamed_and_checked(tmp_path: Path, raw_files: tuple[Path, Path]) -> None:
    spaced = tmp_path / "spaced.json"
    spaced.write_text("\n  " + json.dumps(RAW_PRODUCTS, indent=2), encoding="utf-8")
    assert [p["asin"] for p in load_products(spaced, raw_files[1])] == [SOCKS, BOX, TEE]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(RAW_PRODUCTS)[:-40], encoding="utf-8")  # cut inside the last product
    with pytest.raises(DataError, match="broken.json: not JSON"):
        load_products(broken, raw_files[1])


def test_search_index_does_not_depend_on_the_chunk_size(webshop_catalog: Catalog) -> None:
    from env_servers.webshop.search import ProductSearch

    whole, chunked = ProductSearch(webshop_catalog.products), ProductSearch(webshop_catalog.products, chunk=7)
    queries = [g["instruction_text"] for g in webshop_catalog.goals[:60]] + ["the of", "zzqx", ""]
    assert [whole.search(q) for q in queries] == [chunked.search(q) for q in queries]
    assert sum(bool(whole.search(q)) for q in queries) >= 60
