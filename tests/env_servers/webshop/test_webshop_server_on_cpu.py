"""The WebShop HTTP contract against a real uvicorn server on loopback: scripted episodes, rewards, bad input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from thefuzz import fuzz

from env_servers.webshop.data import Catalog
from env_servers.webshop.reward import normalize_color, purchase_reward
from env_servers.webshop.shop import Shop

STEP_KEYS = {"observation", "reward", "done", "valid", "info", "available_actions"}
NAVIGATION = ("back to search", "< prev", "next >")


def result_asins(page: dict[str, Any]) -> list[str]:
    """The product buttons (lower-cased ASINs) of a results page."""
    return [a for a in page["available_actions"]["clickables"] if a not in NAVIGATION]


def open_session(client: httpx.Client, goal_index: int | None) -> dict[str, Any]:
    r = client.post("/sessions", json={"goal_index": goal_index})
    assert r.status_code == 200, r.text
    body = r.json()
    assert STEP_KEYS <= set(body) and {"session_id", "goal_index", "instruction"} <= set(body)
    if goal_index is not None:
        assert body["goal_index"] == goal_index
    return body


def step(client: httpx.Client, session_id: str, action: str) -> dict[str, Any]:
    r = client.post(f"/sessions/{session_id}/step", json={"action": action})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == STEP_KEYS
    return body


def find_product(client: httpx.Client, session_id: str, keywords: str, asin: str) -> dict[str, Any]:
    """Search, then page with ``next >`` until ``asin`` can be clicked on the results page."""
    page = step(client, session_id, f"search[{keywords}]")
    assert page["valid"] and page["info"]["page"] == "results"
    while asin.lower() not in page["available_actions"]["clickables"]:
        assert "next >" in page["available_actions"]["clickables"], f"{asin} not found for {keywords!r}"
        page = step(client, session_id, "click[next >]")
        assert page["valid"]
    return page


def open_item(client: httpx.Client, session_id: str, keywords: str, asin: str) -> dict[str, Any]:
    find_product(client, session_id, keywords, asin)
    item = step(client, session_id, f"click[{asin}]")
    assert item["valid"] and item["info"]["page"] == "item" and "Buy Now" in item["observation"]
    return item


def buy(client: httpx.Client, session_id: str, options: list[str]) -> dict[str, Any]:
    for value in options:
        page = step(client, session_id, f"click[{value}]")
        assert page["valid"] and page["info"]["page"] == "item", page["observation"][:300]
    done = step(client, session_id, "click[buy now]")
    assert done["valid"] and done["done"] and done["info"]["page"] == "done"
    assert set(options) <= set(done["info"]["options"].values())  # every click chose its option
    return done


def play(client: httpx.Client, catalog: Catalog, goal_index: int, keywords_from: str = "instruction") -> dict:
    """The scripted policy: read the instruction, search, find the goal's product, click its options, buy."""
    session = open_session(client, goal_index)
    sid, goal = session["session_id"], catalog.goals[goal_index]
    assert session["instruction"] == goal["instruction_text"]
    assert session["available_actions"]["has_search_bar"] and goal["instruction_text"] in session["observation"]
    keywords = session["instruction"] if keywords_from == "instruction" else goal[keywords_from]
    open_item(client, sid, keywords, goal["asin"])
    options = goal["goal_options"]
    done = buy(client, sid, list(options.values()) if isinstance(options, dict) else list(options))
    assert done["info"]["asin"] == goal["asin"] and done["info"]["options"] == dict(options)
    assert client.delete(f"/sessions/{sid}").json() == {"closed": sid}
    return done


# ------------------------------------------------------------------ health and goals


def test_health(webshop_client: httpx.Client, webshop_shop: Shop) -> None:
    body = webshop_client.get("/health").json()
    assert body["status"] == "ok" and body["products"] == 100 and body["goals"] == 501
    assert body["human_goals"] is False and body["noun_tagger"] == webshop_shop.noun_tagger
    assert isinstance(body["sessions"], int)


def test_goals_listing(webshop_client: httpx.Client, webshop_catalog: Catalog) -> None:
    body = webshop_client.get("/goals", params={"offset": 10, "limit": 3}).json()
    assert body["total"] == 501
    assert [g["index"] for g in body["goals"]] == [10, 11, 12]
    for g in body["goals"]:
        assert g["instruction"] == webshop_catalog.goals[g["index"]]["instruction_text"]
        assert g["asin"] == webshop_catalog.goals[g["index"]]["asin"]
    assert len(webshop_client.get("/goals").json()["goals"]) == 100  # default page
    assert webshop_client.get("/goals", params={"offset": 500, "limit": 10}).json()["goals"][0]["index"] == 500
    assert webshop_client.get("/goals", params={"limit": 0}).status_code == 422


# ------------------------------------------------------------------ scripted episodes


def test_scripted_policy_scores_one(webshop_client: httpx.Client, webshop_catalog: Catalog) -> None:
    goals = webshop_catalog.goals
    with_options = [i for i, g in enumerate(goals) if len(g["goal_options"]) == 2][:5]
    one_option = next(i for i, g in enumerate(goals) if len(g["goal_options"]) == 1)
    without_options = next(i for i, g in enumerate(goals) if not g["goal_options"])
    for index in [*with_options, one_option, without_options]:
        done = play(webshop_client, webshop_catalog, index)
        assert done["reward"] == 1.0 and done["info"]["final_reward"] == 1.0
        assert "Your score (min 0.0, max 1.0) [SEP] 1.0" in done["observation"]
        details = done["info"]["reward_info"]
        assert details["r_type"] == 1.0 and details["r_att"] == 1.0 and details["r_price"] is True


def test_policy_reading_goals_endpoint_pages_to_the_product(
    webshop_client: httpx.Client, webshop_catalog: Catalog, webshop_shop: Shop
) -> None:
    """Search with the goal's query; the product is on results page 2, reached with ``next >``."""
    search = webshop_shop.search_engine.search
    index = next(
        i
        for i, g in enumerate(webshop_catalog.goals)
        if g["goal_options"] and g["asin"] in search(g["query"]) and 10 <= search(g["query"]).index(g["asin"]) < 20
    )
    listed = webshop_client.get("/goals", params={"offset": index, "limit": 1}).json()["goals"][0]
    assert listed["index"] == index and listed["asin"] == webshop_catalog.goals[index]["asin"]
    done = play(webshop_client, webshop_catalog, index, keywords_from="query")
    assert done["reward"] == 1.0


# ------------------------------------------------------------------ wrong purchases


def _wrong_value(values: list[str], right: str, product: dict[str, Any]) -> str:
    """A value of the same option that neither matches ``right`` nor appears in the product's text."""
    text = " ".join([product["Title"], " ".join(product["BulletPoints"]), product["Description"]]).lower()
    for value in values:
        normal, goal = normalize_color(value), normalize_color(right)
        if value != right and normal != goal and fuzz.token_set_ratio(goal, normal) <= 85 and normal not in text:
            return value
    raise AssertionError(f"no wrong value among {values}")


def test_wrong_size_loses_one_option_point(
    webshop_client: httpx.Client, webshop_catalog: Catalog, webshop_shop: Shop
) -> None:
    index = next(i for i, g in enumerate(webshop_catalog.goals) if set(g["goal_options"]) == {"color", "size"})
    goal = webshop_catalog.goals[index]
    product = webshop_catalog.by_asin[goal["asin"]]
    wrong_size = _wrong_value(product["options"]["size"], goal["goal_options"]["size"], product)
    assert wrong_size not in [normalize_color(v) for v in goal["goal_options"].values()]
    chosen = {"color": goal["goal_options"]["color"], "size": wrong_size}

    sid = open_session(webshop_client, index)["session_id"]
    open_item(webshop_client, sid, goal["instruction_text"], goal["asin"])
    done = buy(webshop_client, sid, list(chosen.values()))
    # the right product at its price scores 1.0 when everything matches (test above): every attribute, the colour,
    # the price and the type still count; only the size point is lost: (n_att + 1 + 1) / (n_att + 2 + 1)
    n_att = len(goal["attributes"])
    assert done["reward"] == pytest.approx((n_att + 2) / (n_att + 3))
    expected, _ = purchase_reward(product, goal, webshop_catalog.prices[goal["asin"]], chosen, webshop_shop.nouns)
    assert done["reward"] == pytest.approx(expected)
    assert done["info"]["reward_info"]["option_matches"] == 1


def test_goal_zero_forest_green_and_x_large(webshop_client: httpx.Client, webshop_catalog: Catalog) -> None:
    """Goal 0 asks for kelly green, 3x-large: forest green still matches (both 'green'), x-large does not."""
    goal = webshop_catalog.goals[0]
    product = webshop_catalog.by_asin[goal["asin"]]
    assert goal["goal_options"] == {"color": "kelly green", "size": "3x-large"}
    assert {"forest green", "x-large"} <= {*product["options"]["color"], *product["options"]["size"]}
    text = " ".join([product["Title"], " ".join(product["BulletPoints"]), product["Description"]]).lower()
    assert "x-large" not in text
    sid = open_session(webshop_client, 0)["session_id"]
    open_item(webshop_client, sid, goal["instruction_text"], goal["asin"])
    done = buy(webshop_client, sid, ["forest green", "x-large"])
    # 4 attributes all match, colour matches, size does not, price ok: (4 + 1 + 1) / (4 + 2 + 1) = 6/7
    assert len(goal["attributes"]) == 4
    assert done["reward"] == pytest.approx(6 / 7)


def test_wrong_product(webshop_client: httpx.Client, webshop_catalog: Catalog, webshop_shop: Shop) -> None:
    index = next(i for i, g in enumerate(webshop_catalog.goals) if g["goal_options"])
    goal = webshop_catalog.goals[index]
    sid = open_session(webshop_client, index)["session_id"]
    results = find_product(webshop_client, sid, goal["instruction_text"], goal["asin"])
    other = next(a.upper() for a in result_asins(results) if a != goal["asin"].lower())
    item = step(webshop_client, sid, f"click[{other}]")
    assert item["valid"] and item["info"]["page"] == "item"
    product = webshop_catalog.by_asin[other]
    chosen = {name: values[0] for name, values in product["options"].items()}
    done = buy(webshop_client, sid, list(chosen.values()))
    expected, details = purchase_reward(product, goal, webshop_catalog.prices[other], chosen, webshop_shop.nouns)
    assert done["reward"] == pytest.approx(expected) and done["reward"] < 1.0
    assert done["info"]["asin"] == other and done["info"]["reward_info"]["r_type"] == details["r_type"]


# ------------------------------------------------------------------ bad actions


@pytest.fixture()
def item_session(webshop_client: httpx.Client, webshop_catalog: Catalog) -> tuple[str, dict[str, Any], dict]:
    """A session on the item page of its goal's product (goal with options)."""
    index = next(i for i, g in enumerate(webshop_catalog.goals) if len(g["goal_options"]) == 2)
    goal = webshop_catalog.goals[index]
    sid = open_session(webshop_client, index)["session_id"]
    item = open_item(webshop_client, sid, goal["instruction_text"], goal["asin"])
    return sid, goal, item


def _assert_invalid_same_page(page: dict[str, Any], before: dict[str, Any], *words: str) -> None:
    assert page["valid"] is False and page["reward"] == 0.0 and page["done"] is False
    first_line, _, rest = page["observation"].partition("\n")
    assert first_line.startswith("Invalid action:")
    for word in words:
        assert word in first_line
    assert rest == before["observation"]  # the page itself is unchanged
    assert page["available_actions"] == before["available_actions"] and page["info"]["page"] == before["info"]["page"]


@pytest.mark.parametrize(
    ("action", "words"),
    [
        ("click[add to cart]", ["'add to cart'", "clickable:", "buy now"]),
        ("click[buy now", ["malformed action", "search[keywords] or click[button]"]),
        ("buy now", ["malformed action"]),
        ("search[red shoes]", ["no search bar", "click[Back to Search]"]),
        ("click[neon plaid]", ["'neon plaid'"]),  # an option value the product does not have
        ("jump[high]", ["unknown action 'jump'"]),
    ],
)
def test_bad_action_on_item_page(
    action: str, words: list[str], webshop_client: httpx.Client, item_session: tuple[str, dict, dict]
) -> None:
    sid, _, item = item_session
    page = step(webshop_client, sid, action)
    _assert_invalid_same_page(page, item, *words)
    assert webshop_client.get(f"/sessions/{sid}").json()["observation"] == item["observation"]


def test_bad_actions_on_search_page(webshop_client: httpx.Client) -> None:
    session = open_session(webshop_client, 3)
    sid = session["session_id"]
    before = webshop_client.get(f"/sessions/{sid}").json()
    assert before["observation"] == session["observation"]
    _assert_invalid_same_page(step(webshop_client, sid, "search[]"), before, "empty search")
    _assert_invalid_same_page(step(webshop_client, sid, "search[   ]"), before, "empty search")
    _assert_invalid_same_page(step(webshop_client, sid, "click[next >]"), before, "'next >'", "clickable: none")
    _assert_invalid_same_page(step(webshop_client, sid, ""), before, "malformed action")


def test_acting_after_buying(webshop_client: httpx.Client, webshop_catalog: Catalog) -> None:
    index = next(i for i, g in enumerate(webshop_catalog.goals) if not g["goal_options"])
    goal = webshop_catalog.goals[index]
    sid = open_session(webshop_client, index)["session_id"]
    open_item(webshop_client, sid, goal["instruction_text"], goal["asin"])
    done = buy(webshop_client, sid, [])
    assert done["reward"] == 1.0
    for action in ("click[buy now]", "search[anything]", "click[back to search]"):
        after = step(webshop_client, sid, action)
        assert after["valid"] is False and after["done"] is True and after["reward"] == 0.0
        assert "episode is over" in after["observation"] and after["info"]["final_reward"] == 1.0
        assert after["available_actions"]["clickables"] == []
    current = webshop_client.get(f"/sessions/{sid}").json()
    assert current["done"] is True and current["info"]["final_reward"] == 1.0


# ------------------------------------------------------------------ navigation


def test_pagination(webshop_client: httpx.Client) -> None:
    sid = open_session(webshop_client, 0)["session_id"]
    page1 = step(webshop_client, sid, "search[color size]")
    total = int(page1["observation"].split("(Total results: ")[1].split(")")[0])
    assert total == 50, "WebShop shows at most 50 results; this search has more"
    assert "Page 1 (Total results:" in page1["observation"]
    assert (
        "< prev" not in page1["available_actions"]["clickables"]
        and "next >" in page1["available_actions"]["clickables"]
    )
    asins1 = result_asins(page1)
    assert len(asins1) == 10

    page2 = step(webshop_client, sid, "click[next >]")
    assert page2["valid"] and "Page 2 (Total results:" in page2["observation"]
    assert {"< prev", "next >"} <= set(page2["available_actions"]["clickables"])
    asins2 = result_asins(page2)
    assert len(asins2) == 10 and not set(asins1) & set(asins2)

    back = step(webshop_client, sid, "click[< prev]")
    assert "Page 1 (Total results:" in back["observation"] and back["observation"] == page1["observation"]

    # as in WebShop, 'next >' stays on the last page and leads to an empty page past it
    past_last = (total + 9) // 10 + 1
    for _ in range(past_last - 1):
        page = step(webshop_client, sid, "click[next >]")
        assert page["valid"] and "next >" in page["available_actions"]["clickables"]
    assert f"Page {past_last} (Total results: {total})" in page["observation"] and not result_asins(page)

    # an item opened from page 2 returns to page 2 with '< prev'
    page = step(webshop_client, sid, "click[back to search]")
    assert page["available_actions"]["has_search_bar"] and page["info"]["page"] == "search"
    step(webshop_client, sid, "search[color size]")
    page2 = step(webshop_client, sid, "click[next >]")
    step(webshop_client, sid, f"click[{asins2[0]}]")
    assert step(webshop_client, sid, "click[< prev]")["observation"] == page2["observation"]


def test_sub_pages(
    webshop_client: httpx.Client, item_session: tuple[str, dict, dict], webshop_catalog: Catalog
) -> None:
    sid, goal, item = item_session
    product = webshop_catalog.by_asin[goal["asin"]]
    color = goal["goal_options"]["color"]
    assert step(webshop_client, sid, f"click[{color}]")["valid"]

    description = step(webshop_client, sid, "click[description]")
    assert description["valid"] and description["info"]["page"] == "sub"
    assert description["available_actions"]["clickables"] == ["back to search", "< prev"]
    assert product["Description"].strip() in description["observation"]
    assert "Buy Now" not in description["observation"]

    back = step(webshop_client, sid, "click[< prev]")
    assert back["info"]["page"] == "item" and back["observation"] == item["observation"]  # WebShop: no restatement

    features = step(webshop_client, sid, "click[features]")
    for bullet in product["BulletPoints"]:
        if bullet.strip():
            assert bullet.strip() in features["observation"]
    step(webshop_client, sid, "click[< prev]")
    reviews = step(webshop_client, sid, "click[reviews]")
    assert reviews["valid"] and all(r["body"] in reviews["observation"] for r in product["Reviews"])
    assert step(webshop_client, sid, "click[buy now]")["valid"] is False  # not on a sub page
    assert step(webshop_client, sid, "click[< prev]")["info"]["page"] == "item"
    assert step(webshop_client, sid, "click[attributes]")["valid"] is False  # hidden unless --show-attrs


# ------------------------------------------------------------------ sessions and HTTP errors


def test_unknown_session_is_404(webshop_client: httpx.Client) -> None:
    for method, path, body in (
        ("POST", "/sessions/nope/step", {"action": "search[x]"}),
        ("POST", "/sessions/nope/reset", {"goal_index": 0}),
        ("GET", "/sessions/nope", None),
        ("DELETE", "/sessions/nope", None),
    ):
        r = webshop_client.request(method, path, json=body)
        assert r.status_code == 404 and "unknown session 'nope'" in r.json()["detail"], (method, path)


def test_delete_then_step_is_404(webshop_client: httpx.Client) -> None:
    sid = open_session(webshop_client, 1)["session_id"]
    assert webshop_client.delete(f"/sessions/{sid}").status_code == 200
    assert webshop_client.post(f"/sessions/{sid}/step", json={"action": "search[x]"}).status_code == 404
    assert webshop_client.get(f"/sessions/{sid}").status_code == 404
    assert webshop_client.delete(f"/sessions/{sid}").status_code == 404


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, ["action", "required"]),
        ({"action": 5}, ["action", "string"]),
        ({"action": ["click[buy now]"]}, ["action", "string"]),
        ({"action": "search[x]", "extra": 1}, ["extra", "not permitted"]),
        ({"action": "search[" + "x" * 2000 + "]"}, ["action", "2000"]),
    ],
)
def test_bad_step_body_is_422(body: dict, words: list[str], webshop_client: httpx.Client) -> None:
    sid = open_session(webshop_client, 2)["session_id"]
    r = webshop_client.post(f"/sessions/{sid}/step", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith("invalid request:")
    for word in words:
        assert word in detail
    assert webshop_client.get("/health").status_code == 200
    assert webshop_client.get(f"/sessions/{sid}").json()["info"]["steps"] == 0  # nothing was applied


def test_missing_or_non_object_body_names_the_expected_body(webshop_client: httpx.Client) -> None:
    sid = open_session(webshop_client, 2)["session_id"]
    for kwargs in ({}, {"json": ["click[buy now]"]}, {"json": "click[buy now]"}):
        r = webshop_client.post(f"/sessions/{sid}/step", **kwargs)
        assert r.status_code == 422
        detail = r.json()["detail"]
        assert "request body must be a JSON object" in detail and '"action"' in detail and "queries" not in detail
    for path in ("/sessions", f"/sessions/{sid}/reset"):
        r = webshop_client.post(path, json=[1])
        assert r.status_code == 422 and '"goal_index"' in r.json()["detail"] and "queries" not in r.json()["detail"]
    assert webshop_client.get(f"/sessions/{sid}").json()["info"]["goal_index"] == 2


def test_malformed_json_body_is_422(webshop_client: httpx.Client) -> None:
    sid = open_session(webshop_client, 2)["session_id"]
    r = webshop_client.post(f"/sessions/{sid}/step", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "malformed JSON" in r.json()["detail"]
    assert webshop_client.get("/health").status_code == 200


@pytest.mark.parametrize("goal_index", [501, 10_000, -1])
def test_goal_index_out_of_range_is_400(goal_index: int, webshop_client: httpx.Client) -> None:
    r = webshop_client.post("/sessions", json={"goal_index": goal_index})
    assert r.status_code == 400 and "out of range" in r.json()["detail"] and "501 goals" in r.json()["detail"]
    sid = open_session(webshop_client, 4)["session_id"]
    r = webshop_client.post(f"/sessions/{sid}/reset", json={"goal_index": goal_index})
    assert r.status_code == 400 and "out of range" in r.json()["detail"]
    assert webshop_client.get(f"/sessions/{sid}").json()["info"]["goal_index"] == 4  # the session is untouched
    assert webshop_client.get("/health").status_code == 200


@pytest.mark.parametrize("body", [{"goal_index": "3"}, {"goal_index": 1.5}, {"goal_index": True}, {"goal": 3}])
def test_bad_open_body_is_422(body: dict, webshop_client: httpx.Client) -> None:
    r = webshop_client.post("/sessions", json=body)
    assert r.status_code == 422 and r.json()["detail"].startswith("invalid request:")
    assert webshop_client.get("/health").status_code == 200


def test_open_without_goal_draws_one(webshop_client: httpx.Client, webshop_catalog: Catalog) -> None:
    for r in (webshop_client.post("/sessions"), webshop_client.post("/sessions", json={})):
        assert r.status_code == 200
        body = r.json()
        assert 0 <= body["goal_index"] < 501
        assert body["instruction"] == webshop_catalog.goals[body["goal_index"]]["instruction_text"]


def test_reset(webshop_client: httpx.Client, webshop_catalog: Catalog) -> None:
    goals = webshop_catalog.goals
    first = next(i for i, g in enumerate(goals) if g["goal_options"])
    other = next(i for i, g in enumerate(goals) if g["instruction_text"] != goals[first]["instruction_text"])
    session = open_session(webshop_client, first)
    sid = session["session_id"]
    step(webshop_client, sid, f"search[{goals[first]['instruction_text']}]")

    r = webshop_client.post(f"/sessions/{sid}/reset", json={"goal_index": other})
    assert r.status_code == 200
    body = r.json()
    assert body["instruction"] == goals[other]["instruction_text"] != session["instruction"]
    assert goals[other]["instruction_text"] in body["observation"]
    assert body["info"] == {"page": "search", "goal_index": other, "steps": 0}
    assert body["available_actions"]["has_search_bar"] and not body["done"]

    # a finished episode can be reset to another goal and played again in the same session
    goal = goals[other]
    open_item(webshop_client, sid, goal["instruction_text"], goal["asin"])
    assert buy(webshop_client, sid, list(goal["goal_options"].values()))["reward"] == 1.0
    again = webshop_client.post(f"/sessions/{sid}/reset", json={"goal_index": first}).json()
    assert again["instruction"] == goals[first]["instruction_text"] and again["done"] is False
    assert again["info"] == {"page": "search", "goal_index": first, "steps": 0}
    goal = goals[first]
    open_item(webshop_client, sid, goal["instruction_text"], goal["asin"])
    assert buy(webshop_client, sid, list(goal["goal_options"].values()))["reward"] == 1.0
    # no goal given: one is drawn, as for a new session
    drawn = webshop_client.post(f"/sessions/{sid}/reset").json()
    assert drawn["instruction"] == goals[drawn["info"]["goal_index"]]["instruction_text"]
