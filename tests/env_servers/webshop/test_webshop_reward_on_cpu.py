"""WebShop's purchase reward, term by term, on small hand-built products and goals (numbers worked out by hand).

The noun extractor is passed explicitly (``words``: every whitespace token is a noun) so the type term never
depends on spaCy. Fuzzy scores quoted in comments are thefuzz's ``token_set_ratio`` worked by hand: the
indel ratio ``2·LCS / (len(a) + len(b))`` of the token-sorted strings, 100 when one token set contains the other.
"""

from __future__ import annotations

import pytest
from thefuzz import fuzz

from env_servers.webshop.reward import (
    COLOR_SET,
    attribute_matches,
    fallback_nouns,
    normalize_color,
    noun_extractor,
    option_matches,
    purchase_reward,
    type_reward,
)


def words(text: str) -> list[str]:
    """Every lower-cased whitespace token counts as a noun."""
    return text.lower().split()


def no_nouns(text: str) -> list[str]:
    return []


def make_product(**overrides) -> dict:
    product = {
        "asin": "B0TEST0001",
        "Title": "Cozy Fleece Hoodie for Women",
        "name": "Cozy Fleece Hoodie for Women",
        "query": "women's hoodies",
        "product_category": "Clothing › Women › Hoodies",
        "BulletPoints": ["Wireless charging pocket", "Soft lining"],
        "Description": "A warm hoodie with a kangaroo pocket.",
        "Attributes": ["machine wash", "long sleeves"],
    }
    product.update(overrides)
    return product


def make_goal(**overrides) -> dict:
    goal = {
        "asin": "B0TEST0001",
        "query": "women's hoodies",
        "product_category": "Clothing › Women › Hoodies",
        "name": "Cozy Fleece Hoodie for Women",
        "attributes": ["machine wash", "long sleeve", "kangaroo pocket", "short sleeve"],
        "goal_options": {"color": "kelly green", "size": "x-large"},
        "price_upper": 40.0,
    }
    goal.update(overrides)
    return goal


# ------------------------------------------------------------------ normalize_color / fallback_nouns


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("kelly green", "green"),
        ("forest green", "green"),
        ("navy | blue", "blue"),  # 'blue' comes before 'navy' in WebShop's list: the first listed colour wins
        ("black forest", "black"),
        ("violet lavender", "lavender"),  # list order, not position in the string
        ("steelivy fuchsia", "fuchsia"),  # substrings count: 'fuchsia' is listed before 'ivy' and 'steel'
        ("123alabaster", "alabaster"),
        ("x-large", "x-large"),  # no colour inside: unchanged
        ("webshop", "webshop"),
        ("", ""),
    ],
)
def test_normalize_color(value: str, expected: str) -> None:
    assert normalize_color(value) == expected


def test_color_set_is_webshops_sorted_list() -> None:
    assert len(COLOR_SET) == 102 and COLOR_SET[0] == "alabaster" and COLOR_SET[-1] == "yellow"
    assert COLOR_SET == sorted(COLOR_SET) and len(set(COLOR_SET)) == len(COLOR_SET)
    assert COLOR_SET.index("blue") < COLOR_SET.index("navy") and "green" in COLOR_SET


def test_fallback_nouns() -> None:
    # 'The', 'for', 'with', 'a' are stop words; '2' is not alphabetic; 'x' has one letter.
    assert fallback_nouns("The Cozy Fleece Hoodie for Women, 2-Pack with a Pocket x") == [
        "cozy",
        "fleece",
        "hoodie",
        "women",
        "pack",
        "pocket",
    ]
    assert fallback_nouns("") == [] and fallback_nouns("the and of 42") == []
    assert fallback_nouns("Men's T-Shirt") == ["men", "shirt"]  # 's' and 't' are single letters


def test_noun_extractor_falls_back_without_a_model() -> None:
    extract, description = noun_extractor(None)
    assert extract is fallback_nouns and description == "fallback"
    extract, description = noun_extractor("no_such_spacy_model_xyz")  # spaCy missing, or the model missing
    assert extract is fallback_nouns and description == "fallback"


# ------------------------------------------------------------------ type term


def test_type_query_match_gives_full_type_reward() -> None:
    # query equal; nouns of the names: 5 of 5 shared -> title_score 1.0
    kind = type_reward(make_product(), make_goal(), words)
    assert kind == {"r_type": 1.0, "query_match": True, "category_match": True, "title_score": 1.0}


def test_type_query_match_rescues_a_low_title_score() -> None:
    # product nouns {hoodie} vs goal's 5 -> 1/5 = 0.2 (not > 0.2), but the query matches -> 1.0
    product = make_product(name="Hoodie", product_category="Toys")
    kind = type_reward(product, make_goal(), words)
    assert kind["title_score"] == pytest.approx(0.2)
    assert kind["query_match"] and not kind["category_match"]
    assert kind["r_type"] == 1.0


def test_type_no_query_or_category_match_and_title_score_at_most_02_gives_half() -> None:
    product = make_product(name="Hoodie", query="sweaters", product_category="Toys › Games")
    kind = type_reward(product, make_goal(), words)
    assert kind == {"r_type": 0.5, "query_match": False, "category_match": False, "title_score": pytest.approx(0.2)}


def test_type_two_category_levels_match() -> None:
    # {Clothing, Women, Sweaters} & {Clothing, Women, Hoodies} = 2 levels -> category match -> 1.0 at title_score 0.2
    product = make_product(name="Hoodie", query="sweaters", product_category="Clothing › Women › Sweaters")
    kind = type_reward(product, make_goal(), words)
    assert kind["category_match"] and kind["r_type"] == 1.0
    # one shared level is not enough: {Clothing} -> 0.5
    product = make_product(name="Hoodie", query="sweaters", product_category="Clothing › Men › Sweaters")
    kind = type_reward(product, make_goal(), words)
    assert not kind["category_match"] and kind["r_type"] == 0.5


def test_type_title_score_above_02_suffices() -> None:
    # goal nouns {cozy, fleece, hoodie, women} (4), product shares 'hoodie' -> 1/4 = 0.25 > 0.2 -> 1.0
    goal = make_goal(name="Cozy Fleece Hoodie Women")
    product = make_product(name="Hoodie", query="sweaters", product_category="Toys")
    kind = type_reward(product, goal, words)
    assert kind["title_score"] == pytest.approx(0.25) and kind["r_type"] == 1.0


def test_type_title_score_under_01_gives_01_even_with_a_query_match() -> None:
    # 1 of 11 goal nouns shared -> 1/11 = 0.0909 < 0.1 -> 0.1 (the query match does not help)
    goal = make_goal(name="hoodie a b c d e f g h i j")
    kind = type_reward(make_product(name="Hoodie"), goal, words)
    assert kind["query_match"] and kind["title_score"] == pytest.approx(1 / 11)
    assert kind["r_type"] == 0.1


def test_type_no_shared_noun_gives_zero() -> None:
    kind = type_reward(make_product(name="Garden Hose"), make_goal(), words)
    assert kind["query_match"] and kind["category_match"] and kind["title_score"] == 0.0
    assert kind["r_type"] == 0.0


def test_type_goal_name_without_nouns_defaults_title_score_to_02() -> None:
    kind = type_reward(make_product(), make_goal(), no_nouns)
    assert kind["title_score"] == 0.2 and kind["r_type"] == 1.0  # query matches
    product = make_product(query="sweaters", product_category="Toys")
    kind = type_reward(product, make_goal(), no_nouns)
    assert kind["title_score"] == 0.2 and kind["r_type"] == 0.5


def test_type_uses_title_when_product_has_no_name() -> None:
    product = make_product(Title="Garden Hose", query="hoses", product_category="Garden")
    del product["name"]
    assert type_reward(product, make_goal(), words)["r_type"] == 0.0
    product["Title"] = "Fleece Hoodie"  # 2 of 5 goal nouns -> 0.4 > 0.2
    kind = type_reward(product, make_goal(), words)
    assert kind["title_score"] == pytest.approx(0.4) and kind["r_type"] == 1.0


def test_type_uses_the_given_noun_extractor() -> None:
    calls: list[str] = []

    def recording(text: str) -> list[str]:
        calls.append(text)
        return words(text)

    type_reward(make_product(name="Fleece Hoodie"), make_goal(), recording)
    assert sorted(calls) == sorted(["Fleece Hoodie", "Cozy Fleece Hoodie for Women"])


# ------------------------------------------------------------------ attribute term


def test_attribute_fuzzy_match_in_attributes() -> None:
    product = make_product()
    # 'wash machine' vs 'machine wash': same token set -> 100
    assert attribute_matches(product, ["wash machine"]) == 1
    # 'long sleeve' vs 'long sleeves': 2·11/23 = 95.7 > 85
    assert fuzz.token_set_ratio("long sleeves", "long sleeve") > 85
    assert attribute_matches(product, ["long sleeve"]) == 1
    # 'cotton' is a subset of the tokens of 'cotton spandex' -> 100
    assert attribute_matches(make_product(Attributes=["cotton spandex"]), ["cotton"]) == 1


@pytest.mark.parametrize(
    "attribute",
    ["fleece hoodie", "wireless charging", "kangaroo pocket"],  # in the title, a bullet point, the description
)
def test_attribute_found_in_product_text(attribute: str) -> None:
    assert attribute_matches(make_product(Attributes=["DUMMY_ATTR"]), [attribute]) == 1


def test_attribute_non_match() -> None:
    product = make_product()
    # 'short sleeve' vs 'long sleeves': no shared token, 2·8/24 = 66.7; vs 'machine wash' far lower; not in the text
    assert fuzz.token_set_ratio("short sleeve", "long sleeves") <= 85
    assert attribute_matches(product, ["short sleeve"]) == 0
    # the text fallback is a plain substring test: a reordered phrase is not found
    assert attribute_matches(make_product(Attributes=[]), ["pocket kangaroo"]) == 0


def test_attribute_matches_count() -> None:
    # machine wash (exact), long sleeve (fuzzy), kangaroo pocket (description), short sleeve (none) -> 3
    assert attribute_matches(make_product(), make_goal()["attributes"]) == 3


# ------------------------------------------------------------------ option term


GOAL_OPTIONS = {"color": "kelly green", "size": "x-large"}


def test_webshop_rule_scores_the_goals_name_value_pairs() -> None:
    # WebShop colour-normalises the goal's (name, value) pairs: on a tuple "contains" is membership, so
    # ('color', 'kelly green') stays a pair, compared by its text "color kelly green"; the chosen 'forest green' becomes
    # 'green', whose one token is inside the pair's tokens -> token-set ratio 100 -> hit
    assert normalize_color(("color", "kelly green")) == ("color", "kelly green")
    assert normalize_color("forest green") == "green"
    assert option_matches(GOAL_OPTIONS, {"color": "forest green"}) == 1
    # 'maroon' shares no token with either pair -> 0
    assert option_matches(GOAL_OPTIONS, {"color": "maroon"}) == 0
    # both hit -> 2; nothing chosen -> 0; a goal without options -> 0
    assert option_matches(GOAL_OPTIONS, {"color": "kelly green", "size": "x-large"}) == 2
    assert option_matches(GOAL_OPTIONS, {}) == 0 and option_matches({}, {"color": "red"}) == 0


def test_webshop_rule_size_is_fuzzy() -> None:
    # the case 3: 'x-large' processes to "x large", so 'large' is a subset of ('size', 'x-large') -> hit
    assert option_matches(GOAL_OPTIONS, {"size": "large"}) == 1
    # '3x-large' -> tokens {3x, large} vs {size, x, large}: not a subset; best of the three token-set comparisons
    # is "large" vs "large 3x" = 2·5/13 = 77 <= 85 -> miss
    assert fuzz.token_set_ratio("3x-large", ("size", "x-large")) == 77
    assert option_matches(GOAL_OPTIONS, {"size": "3x-large"}) == 0


def test_webshop_rule_has_no_text_fallback_and_counts_goal_options() -> None:
    # the case 1: pink / x-large wanted, black / x-large bought: only the size pair is hit (no credit for a
    # colour that appears in the product's text)
    assert option_matches({"color": "pink", "size": "x-large"}, {"color": "black", "size": "x-large"}) == 1
    # case 2: the chosen 'antique graywash' normalises to 'ash' (the first colour of WebShop's list inside it), the
    # goal pair is not normalised: "ash" vs "color antique graywash" share no token -> the right option misses
    assert normalize_color("antique graywash") == "ash"
    assert option_matches({"color": "antique graywash"}, {"color": "antique graywash"}) == 0
    # case 4: what is counted is goal options hit, at most one each, not chosen options that match
    assert option_matches({"size": "large"}, {"size": "large", "fit": "large"}) == 1


def test_webshop_rule_on_a_human_goals_plain_values() -> None:
    # human goals list values without names: colour-normalised strings ('kelly green' -> 'green')
    assert option_matches(["kelly green", "x-large"], {"color": "forest green", "size": "x-large"}) == 2
    assert option_matches(["kelly green", "x-large"], {"color": "forest green", "size": "large"}) == 2


def test_by_name_rule_matches_each_goal_option_to_the_one_chosen_under_its_name() -> None:
    by_name = {"rule": "by_name"}
    # colour: both normalised ('kelly green', 'forest green' -> 'green') and fuzzy -> hit; size exact
    assert option_matches(GOAL_OPTIONS, {"color": "forest green", "size": "x-large"}, **by_name) == 2
    assert option_matches(GOAL_OPTIONS, {"size": "large"}, **by_name) == 0  # case 3: large is not x-large
    assert option_matches(GOAL_OPTIONS, {"Size": "x-large"}, **by_name) == 1  # names compared lower-cased
    assert option_matches(GOAL_OPTIONS, {"fit": "x-large"}, **by_name) == 0  # not under the goal's name
    assert option_matches({"color": "antique graywash"}, {"color": "antique graywash"}, **by_name) == 1  # case 2
    assert option_matches({"color": "pink", "size": "x-large"}, {"color": "black", "size": "x-large"}, **by_name) == 1
    with pytest.raises(ValueError, match="unknown option rule"):
        option_matches(GOAL_OPTIONS, {}, rule="text")


# ------------------------------------------------------------------ price term and the total


def test_price_above_the_limit_drops_one_point() -> None:
    goal = make_goal(attributes=["machine wash"], goal_options={})
    # 1 attribute + 0 options + 1 price: (1 + 0 + 1) / 2 = 1.0 at 40 (limit 40, inclusive), (1 + 0 + 0) / 2 at 40.01
    at_limit, details = purchase_reward(make_product(), goal, 40.0, {}, words)
    assert at_limit == 1.0 and details["r_price"] is True and details["w_price"] == 0.5
    above, details = purchase_reward(make_product(), goal, 40.01, {}, words)
    assert above == 0.5 and details["r_price"] is False


def test_no_price_limit_gives_no_price_point() -> None:
    goal = make_goal(attributes=["machine wash"], goal_options={}, price_upper=0)
    reward, details = purchase_reward(make_product(), goal, 5.0, {}, words)
    assert reward == 0.5 and "r_price" not in details  # (1 + 0 + 0) / (1 + 0 + 1)


def test_purchase_reward_dict_goal_options() -> None:
    chosen = {"color": "forest green", "size": "3x-large"}
    reward, details = purchase_reward(make_product(), make_goal(), 30.0, chosen, words)
    # attributes: machine wash, long sleeve, kangaroo pocket match; short sleeve does not -> 3 of 4
    # options: 'green' hits ('color', 'kelly green'); '3x-large' misses ('size', 'x-large') at 77 -> 1
    # price 30 <= 40 -> 1; type: query match, title score 1 -> 1.0
    # reward = 1.0 · (3 + 1 + 1) / (4 + 2 + 1) = 5/7
    assert reward == pytest.approx(5 / 7)
    assert details["attribute_matches"] == 3 and details["option_matches"] == 1
    assert details["r_att"] == pytest.approx(3 / 4) and details["w_att"] == pytest.approx(4 / 7)
    assert details["r_option"] == pytest.approx(1 / 2) and details["w_option"] == pytest.approx(2 / 7)
    assert details["r_price"] is True and details["w_price"] == pytest.approx(1 / 7)
    assert details["r_type"] == 1.0
    # over the price limit: (3 + 1 + 0) / 7 = 4/7
    reward, _ = purchase_reward(make_product(), make_goal(), 45.0, chosen, words)
    assert reward == pytest.approx(4 / 7)


def test_purchase_reward_list_goal_options_as_human_goals() -> None:
    goal = make_goal(goal_options=["kelly green", "x-large"])
    chosen = {"color": "forest green", "size": "x-large"}
    # attributes 3 of 4 (as above); options: green ~ green, x-large ~ x-large -> 2; price 30 <= 40 -> 1
    # reward = 1.0 · (3 + 2 + 1) / (4 + 2 + 1) = 6/7
    reward, details = purchase_reward(make_product(), goal, 30.0, chosen, words)
    assert reward == pytest.approx(6 / 7) and details["option_matches"] == 2
    # the same purchase of a product of another type: nouns {hoodie} of 5 -> 0.2, no query/category match -> 0.5
    # reward = 0.5 · 6/7 = 3/7
    other = make_product(name="Hoodie", query="sweaters", product_category="Toys")
    reward, details = purchase_reward(other, goal, 30.0, chosen, words)
    assert details["r_type"] == 0.5 and reward == pytest.approx(3 / 7)
    # and one sharing no noun with the goal's name scores 0 whatever else matches
    reward, _ = purchase_reward(make_product(name="Garden Hose"), goal, 30.0, chosen, words)
    assert reward == 0.0


def test_purchase_reward_perfect_purchase_is_one() -> None:
    goal = make_goal(attributes=["machine wash", "long sleeve"], goal_options={"color": "kelly green"})
    # (2 + 1 + 1) / (2 + 1 + 1) = 1
    reward, details = purchase_reward(make_product(), goal, 39.99, {"color": "kelly green"}, words)
    assert reward == 1.0 and details["r_att"] == 1.0 and details["r_option"] == 1.0
    # no goal options: no option weight in the details
    reward, details = purchase_reward(make_product(), make_goal(goal_options={}), 10.0, {}, words)
    assert reward == pytest.approx((3 + 0 + 1) / (4 + 0 + 1)) and "r_option" not in details
