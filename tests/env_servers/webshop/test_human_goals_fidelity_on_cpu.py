"""Human goals against WebShop's own: ``human_goals/reference.json`` holds what WebShop's code (``load_products``,
``get_goals(human_goals=True)``, its seed-233 shuffle, ``get_reward``; run by ``make_reference_human_goals.py``) makes
of an ``items_human_ins.json``-format file for the bundled products. The catalog must give the same prices, the same
goals in the same order, and the same rewards; and WebShop's split of its goals (test = the first 500) must be what
``mem1 webshop-tasks --goals test`` writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from env_servers.webshop.data import BUNDLED_ATTRIBUTES, load_catalog
from env_servers.webshop.reward import noun_extractor, purchase_reward
from verl_mem1.tasks.webshop import WEBSHOP_SPLITS, parse_goal_range

HERE = Path(__file__).resolve().parent / "human_goals"


@pytest.fixture(scope="module")
def reference():
    return json.loads((HERE / "reference.json").read_text())


@pytest.fixture(scope="module")
def catalog(reference):
    return load_catalog(human_goals_path=HERE / "items_human_ins.json", seed=reference["seed"])


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_reference_human_goals", HERE.parent / "make_reference_human_goals.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_instruction_file_is_the_generators(catalog):
    """The committed file is what the generator writes for today's bundled products (so the reference is current)."""
    attributes = json.loads(BUNDLED_ATTRIBUTES.read_text(encoding="utf-8"))
    written = _generator().human_instructions(catalog.products, attributes)
    assert json.loads(json.dumps(written)) == json.loads((HERE / "items_human_ins.json").read_text())


def test_prices_are_webshops(catalog, reference):
    assert catalog.prices == reference["prices"]  # WebShop's global random seeded as the catalog's generator


def test_goals_are_webshops_in_webshops_order(catalog, reference):
    generator = _generator()
    ours = [generator.goal_view(g) for g in catalog.goals]
    assert catalog.human_goals and len(ours) == len(reference["goals"]) == 76
    assert json.loads(json.dumps(ours)) == reference["goals"]
    # the file's entries without attributes and the two unknown ASINs are what WebShop skips
    entries = json.loads((HERE / "items_human_ins.json").read_text())
    known = {p["asin"] for p in catalog.products}
    kept = [e for asin, rows in entries.items() if asin in known for e in rows if e["instruction_attributes"]]
    assert len(kept) == 76 < sum(len(rows) for rows in entries.values())


def test_rewards_are_webshops(catalog, reference):
    nouns, tagger = noun_extractor()
    assert tagger.startswith("spacy:")
    rows = reference["purchases"]
    expected = _generator().purchases(catalog)
    assert [{k: r[k] for k in r if k != "reward"} for r in rows] == json.loads(json.dumps(expected))
    mismatches = []
    for row in rows:
        goal, product = catalog.goals[row["goal_index"]], catalog.by_asin[row["asin"]]
        reward = purchase_reward(product, goal, row["price"], row["options"], nouns)[0]
        if reward != row["reward"]:
            mismatches.append((row["goal_index"], row["kind"], reward, row["reward"]))
    assert not mismatches, mismatches[:10]
    assert len({r["reward"] for r in rows}) > 10  # the purchases reach many different scores


@pytest.mark.parametrize(
    ("spec", "total", "expected"),
    [
        ("test", 12087, range(0, 500)),
        ("eval", 12087, range(500, 1500)),
        ("train", 12087, range(1500, 12087)),
        ("test", 501, range(0, 500)),
        ("train", 2000, range(1500, 2000)),
    ],  # fmt: skip
)
def test_webshop_split_names(spec, total, expected):
    """WebShop's baseline environment: test goals 0-499, eval 500-1499, train 1500 onwards."""
    assert parse_goal_range(spec, total) == expected
    assert WEBSHOP_SPLITS[spec][0] == expected.start


def test_split_past_the_goals_is_an_error():
    with pytest.raises(ValueError, match="'eval'.*500:1500.*76 goals"):
        parse_goal_range("eval", 76)


def test_webshop_tasks_writes_webshops_test_split(tmp_path, capsys):
    import pandas as pd

    from verl_mem1.cli import main

    out = tmp_path / "test.parquet"
    assert main(["webshop-tasks", "--goals", "test", "--out", str(out)]) == 0  # the bundled shop: 501 goals
    rows = pd.read_parquet(out).to_dict(orient="records")
    assert [r["extra_info"]["goal_index"] for r in rows] == list(range(500))
    assert {r["extra_info"]["split"] for r in rows} == {"test"}
    assert main(["webshop-tasks", "--goals", "train", "--out", str(tmp_path / "x.parquet")]) == 2
    assert "'train' split is goals 1500:" in capsys.readouterr().err


def test_webshop_tasks_from_human_goals(catalog, tmp_path):
    import pandas as pd

    from verl_mem1.cli import main

    out = tmp_path / "human.parquet"
    assert main(["webshop-tasks", "--human-goals", str(HERE / "items_human_ins.json"), "--out", str(out)]) == 0
    rows = pd.read_parquet(out).to_dict(orient="records")
    assert len(rows) == 76
    for row, goal in zip(rows, catalog.goals, strict=True):
        assert goal["instruction_text"] in row["prompt"][0]["content"] and not goal["instruction_text"].endswith(".")


def test_server_lists_human_goals_and_scores_them(catalog):
    """``GET /goals`` lists a human goal's option values (they have no names); a purchase scores as WebShop's."""
    import httpx

    from env_servers.background import BackgroundServer
    from env_servers.webshop.server import create_app
    from env_servers.webshop.shop import Shop

    shop = Shop(catalog)
    with BackgroundServer(create_app(shop)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        health = client.get("/health").json()
        assert health["human_goals"] is True and health["goals"] == 76
        listed = client.get("/goals", params={"limit": 100}).json()["goals"]
        assert [g["instruction"] for g in listed] == [g["instruction_text"] for g in catalog.goals]
        assert all(g["options"] == {} for g in listed)
        assert [g["option_values"] for g in listed] == [g["goal_options"] for g in catalog.goals]
        index = next(i for i, g in enumerate(catalog.goals) if not catalog.by_asin[g["asin"]]["options"])
        goal = catalog.goals[index]
        session = client.post("/sessions", json={"goal_index": index}).json()
        for action in (f"search[{catalog.by_asin[goal['asin']]['Title']}]", f"click[{goal['asin'].lower()}]",
                       "click[buy now]"):  # fmt: skip
            page = client.post(f"/sessions/{session['session_id']}/step", json={"action": action}).json()
            assert page["valid"], page["observation"][:200]
        nouns = shop.nouns
        expected = purchase_reward(catalog.by_asin[goal["asin"]], goal, catalog.prices[goal["asin"]], {}, nouns)[0]
        assert page["done"] and page["reward"] == expected
