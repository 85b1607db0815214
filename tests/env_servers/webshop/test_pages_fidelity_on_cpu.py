"""The shop's pages against WebShop's own ``text`` observations: ``reference_pages.json`` holds what WebShop's templates
and its ``convert_html_to_text`` give for sessions of the bundled shop (``make_reference_pages.py``, run from a WebShop
checkout) after every action; the shop's default observation must be the same text, page by page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from env_servers.webshop.data import load_catalog
from env_servers.webshop.reward import fallback_nouns
from env_servers.webshop.shop import Shop

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def reference():
    return json.loads((HERE / "reference_pages.json").read_text())


@pytest.fixture(scope="module")
def generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_reference_pages", HERE / "make_reference_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shop():
    return Shop(load_catalog(), nouns=fallback_nouns, show_attrs=True)


def test_every_page_is_webshops_text(shop, reference, generator):
    assert [{k: c[k] for k in ("goal_index", "actions")} for c in reference["cases"]] == generator.cases(shop.catalog)
    kinds = set()
    for case in reference["cases"]:
        session, first = shop.create(goal_index=case["goal_index"])
        observations = [first.observation]
        for action in case["actions"]:
            step = shop.step(session, action)
            assert step.valid, (case["goal_index"], action)
            observations.append(step.observation)
            kinds.add(step.info["page"])
        for action, ours, webshop in zip(["(start)", *case["actions"]], observations, case["pages"], strict=True):
            assert ours == webshop, (case["goal_index"], action)
    assert kinds == {"search", "results", "item", "sub", "done"}


def test_every_products_item_and_sub_pages_are_webshops_text(shop, reference, generator):
    """All 100 products: the item page without and with options chosen, Description, Features, Reviews, Attributes."""
    states = reference["states"]
    assert [{k: v for k, v in s.items() if k != "page_text"} for s in states] == generator.product_states(shop.catalog)
    session_id, _ = shop.create(goal_index=0)
    shop.step(session_id, "search[hoodie]")
    session = shop._get(session_id)
    for state in states:
        generator.apply_state(session, state)
        assert shop.render(session) == state["page_text"], state


def test_annotated_variant_restates_the_choices(reference):
    shop = Shop(load_catalog(), nouns=fallback_nouns, show_attrs=True, observation="annotated")
    case = reference["cases"][0]
    session, _ = shop.create(goal_index=case["goal_index"])
    for action in case["actions"][:5]:  # search, next, prev, open the product, choose its first option
        step = shop.step(session, action)
    assert step.observation.startswith("You have clicked ") and step.observation != case["pages"][5]
    with pytest.raises(ValueError, match="unknown observation"):
        Shop(load_catalog(), nouns=fallback_nouns, observation="html")
