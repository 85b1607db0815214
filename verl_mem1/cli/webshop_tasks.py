"""``mem1 webshop-tasks``: write WebShop goals as verl RL parquet tasks (one row per goal).

The work is :func:`verl_mem1.tasks.webshop.webshop_rows`; the catalog is the WebShop server's
(:func:`env_servers.webshop.data.load_catalog`), read with the same data files and seed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _cmd_webshop_tasks(args: argparse.Namespace) -> int:
    from env_servers.webshop.data import load_catalog
    from verl_mem1.tasks.compose import write_tasks_parquet
    from verl_mem1.tasks.webshop import WEBSHOP_SPLITS, parse_goal_range, webshop_rows

    try:
        if (args.products is None) != (args.attributes is None):
            raise ValueError("--products and --attributes go together")
        catalog = load_catalog(args.products, args.attributes, human_goals_path=args.human_goals, seed=args.seed)
        indices = parse_goal_range(args.goals, len(catalog.goals))
        split = args.split or (args.goals if args.goals in WEBSHOP_SPLITS else "train")
        rows = webshop_rows(catalog.goals, indices, split=split, max_turns=args.max_turns, agent_name=args.agent_name)
        out = write_tasks_parquet(rows, args.out)
    except (ValueError, OSError) as exc:
        print(f"mem1 webshop-tasks: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(rows)} WebShop tasks (goals {indices.start}:{indices.stop}) to {out}")
    return 0


def add_webshop_tasks_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 webshop-tasks`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "webshop-tasks",
        help="write WebShop goals as verl RL parquet tasks (for `mem1 train`, verl recipes and `mem1 eval --tasks`)",
        description=(
            "One verl RL row per WebShop goal in --goals, prompt with the goal's instruction. Give the same data "
            "files and --seed as the WebShop server the tasks will be played on."
        ),
        epilog="example: mem1 webshop-tasks --goals 50: --split train --out webshop-train.parquet",
    )
    parser.add_argument(
        "--goals",
        default="0:",
        metavar="START:STOP|test|eval|train",
        help="goal indices (default: all), or WebShop's split of its goals: test 0:500, eval 500:1500, train 1500:",
    )
    parser.add_argument(
        "--split", default=None, help="split name stored in extra_info (default: the --goals split name, else train)"
    )
    parser.add_argument("--products", default=None, metavar="PATH", help="WebShop products (default: bundled)")
    parser.add_argument("--attributes", default=None, metavar="PATH", help="WebShop attributes file")
    parser.add_argument("--human-goals", default=None, metavar="PATH", help="items_human_ins.json: human goals")
    parser.add_argument("--seed", type=int, default=0, help="the WebShop server's --seed (default 0)")
    parser.add_argument("--max-turns", type=int, default=None, help="state the turn budget in the prompt")
    parser.add_argument("--agent-name", default=None, help="verl agent loop name for each row (e.g. mem1_agent)")
    parser.add_argument("--out", required=True, metavar="PATH", help="output parquet")
    parser.set_defaults(func=_cmd_webshop_tasks)
    return parser
