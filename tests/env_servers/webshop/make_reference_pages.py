"""Write ``reference_pages.json``: WebShop's own ``text`` observation of every kind of page, for sessions of the bundled
shop, made by WebShop's code from a WebShop checkout: its HTML templates rendered by its ``map_action_to_html`` and
turned into text by its ``WebAgentTextEnv.convert_html_to_text(simple=True)``.

    python tests/env_servers/webshop/make_reference_pages.py --webshop /path/to/WebShop --deps DIR

``--deps``: a folder with WebShop's pinned Flask and BeautifulSoup (``pip install --target DIR flask==2.1.2
werkzeug==2.1.2 jinja2==3.1.2 itsdangerous==2.1.2 beautifulsoup4==4.11.1``), kept out of the project's environment.
WebShop's search engine (pyserini, Java) and its gym / selenium imports are stubbed: the results shown are the
project's own search results, so the pages are compared "given the same results". Nothing of WebShop is copied here:
its modules and templates are used from the checkout.

Each case is a sequence of actions played on the project's shop; after each action the shop's state (page, results,
product, chosen options, sub-page, reward) is handed to WebShop's renderer. Each product's item page (no option chosen,
then its first values chosen) and sub-pages are rendered from states set directly (``product_states``).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "reference_pages.json"
ROOT = HERE.parents[2]


def cases(catalog) -> list[dict]:
    """Action sequences covering each page kind: search, results (first, middle and last page), item (no option,
    options chosen), every sub-page, the purchase."""
    out = []
    for goal_index in (0, 7, 120, 333):
        goal = catalog.goals[goal_index]
        product = catalog.by_asin[goal["asin"]]
        asin = goal["asin"].lower()
        options = [values[0] for values in product["options"].values() if values]
        actions = [f"search[{goal['instruction_text']}]", "click[next >]", "click[< prev]", f"click[{asin}]"]
        actions += [f"click[{v}]" for v in options[:2]]
        actions += ["click[description]", "click[< prev]", "click[features]", "click[< prev]", "click[reviews]"]
        actions += ["click[< prev]", "click[attributes]", "click[< prev]", "click[buy now]"]
        out.append({"goal_index": goal_index, "actions": actions})
    out.append({"goal_index": 3, "actions": ["search[black]", "click[next >]", "click[next >]", "click[< prev]"]})
    out.append({"goal_index": 4, "actions": ["search[hoodie]", "click[back to search]"]})
    # an option value with '&' on the purchase page (Jinja's tojson escapes it)
    goal = catalog.goals[333]
    out.append({"goal_index": 333, "actions": [f"search[{goal['instruction_text']}]", f"click[{goal['asin'].lower()}]",
                                               "click[variety - sweet & savory]", "click[buy now]"]})  # fmt: skip
    return out


def product_states(catalog) -> list[dict]:
    """Every product's item page without and with options chosen, and its four sub-pages."""
    states = []
    for product in catalog.products:
        first = {name: values[0] for name, values in product["options"].items() if values}
        states.append(dict(page="item", asin=product["asin"], options={}, sub_page=None))
        states.append(dict(page="item", asin=product["asin"], options=first, sub_page=None))
        for sub in ("Description", "Features", "Reviews", "Attributes"):
            states.append(dict(page="sub", asin=product["asin"], options=first, sub_page=sub))
    return states


def apply_state(session, state: dict) -> None:
    """Put a session (on goal 0, after a search) on the page ``state`` describes."""
    session.page, session.asin, session.sub_page = state["page"], state["asin"], state["sub_page"]
    session.options = dict(state["options"])


def _stub_imports() -> None:
    """WebShop's text env imports its search engine (pyserini, Java), gym and selenium at module level."""
    for name in ("gym", "gym.envs", "gym.envs.registration", "pyserini", "pyserini.search", "pyserini.search.lucene",
                 "cleantext", "rank_bm25", "web_agent_site.envs.web_agent_site_env"):  # fmt: skip
        module = types.ModuleType(name)
        module.Env = object
        module.register = lambda **kwargs: None
        module.LuceneSearcher = module.BM25Okapi = module.WebAgentSiteEnv = None
        sys.modules[name] = module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--webshop", required=True, help="a WebShop checkout (github.com/princeton-nlp/WebShop)")
    parser.add_argument("--deps", required=True, help="a folder with flask<3 and beautifulsoup4 installed")
    args = parser.parse_args()
    sys.path[:0] = [str(Path(args.webshop).resolve()), str(Path(args.deps).resolve()), str(ROOT), str(HERE)]
    _stub_imports()
    from make_reference_rewards import alias_spacy_model

    alias_spacy_model()
    from bs4 import BeautifulSoup
    from web_agent_site.envs import web_agent_text_env as text_env

    from env_servers.webshop.data import load_catalog
    from env_servers.webshop.reward import fallback_nouns
    from env_servers.webshop.shop import PRODUCT_WINDOW, Shop

    catalog = load_catalog()
    shop = Shop(catalog, nouns=fallback_nouns, show_attrs=True)
    converter = types.SimpleNamespace(_parse_html=lambda html: BeautifulSoup(html, "html.parser"))

    def webshop_text(session) -> str:
        goal = session.goal
        common = dict(session_id="s", instruction_text=goal["instruction_text"])
        if session.page == "search":
            action, kwargs = "start", common
        elif session.page == "results":
            start = (session.results_page - 1) * PRODUCT_WINDOW
            products = [catalog.by_asin[a] for a in session.results[start : start + PRODUCT_WINDOW]]
            action = "search[x]"
            kwargs = dict(common, products=products, keywords=session.keywords.split(), page=session.results_page,
                          total=len(session.results))  # fmt: skip
        elif session.page == "done":
            action = "click[Buy Now]"
            kwargs = dict(session_id="s", reward=session.reward, asin=session.asin, options=dict(session.options),
                          instruction_text=goal["instruction_text"])  # fmt: skip
        else:
            action = f"click[{session.sub_page}]" if session.page == "sub" else "click[item]"
            kwargs = dict(common, product_info=catalog.by_asin[session.asin], keywords=session.keywords.split(),
                          page=session.results_page, asin=session.asin, options=dict(session.options),
                          show_attrs=shop.show_attrs)  # fmt: skip
        with text_env.app.app_context(), text_env.app.test_request_context():
            html = text_env.map_action_to_html(action, **kwargs)
        return text_env.WebAgentTextEnv.convert_html_to_text(converter, html, simple=True)

    rows = []
    for case in cases(catalog):
        session_id, _ = shop.create(goal_index=case["goal_index"])
        pages = [webshop_text(shop._get(session_id))]
        for action in case["actions"]:
            assert shop.step(session_id, action).valid, (case, action)
            pages.append(webshop_text(shop._get(session_id)))
        rows.append({**case, "pages": pages})
    states = []
    session_id, _ = shop.create(goal_index=0)
    shop.step(session_id, "search[hoodie]")
    for state in product_states(catalog):
        apply_state(shop._get(session_id), state)
        states.append({**state, "page_text": webshop_text(shop._get(session_id))})
    header = {
        "source": "WebShop's templates via map_action_to_html, text via WebAgentTextEnv.convert_html_to_text(simple)",
        "generator": "tests/env_servers/webshop/make_reference_pages.py",
    }
    OUT.write_text(json.dumps({"about": header, "cases": rows, "states": states}, indent=0) + "\n")
    print(f"wrote {sum(len(r['pages']) for r in rows) + len(states)} WebShop pages to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
