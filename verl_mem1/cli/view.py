"""``mem1 view EPISODES...``: a static HTML page of episodes, turn by turn (what the agent saw, kept and dropped).

The work is :func:`verl_mem1.viewer.page.write_page`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_view_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 view`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "view",
        help="an HTML page of episodes, turn by turn: the context seen, the internal state kept, what was dropped",
        description="Write one self-contained HTML page (opens from disk, no server) of episode records: an index "
        "with filters, and for each episode every turn's context with its parts marked (prompt, kept internal state, "
        "last query, observation, turns-left hint), the generation with its tags, what the context rule dropped, "
        "invalid actions' reasons; the same task under mem1 and full side by side when both are given; and one "
        "episode's packed training sample as an attention-mask picture. Reads `mem1 eval`/`mem1 rollout`/"
        "`mem1 trajectories` JSONL and verl's rollout dumps (trainer.rollout_data_dir) of the MEM1 agent loop.",
    )
    parser.add_argument(
        "episodes", nargs="+", help="JSONL files of episodes, `mem1 eval` folders, or verl rollout dump folders"
    )
    parser.add_argument("--out", default="view", help="output folder for index.html and mask.png (default ./view)")
    parser.add_argument(
        "--tokenizer", default=None, help="model or tokenizer path to decode with (default: the model each file names)"
    )
    parser.add_argument("--mask-episode", default=None, help="task id of the episode whose mask is drawn")
    parser.add_argument("--limit", type=int, default=None, help="read at most this many episodes")
    parser.add_argument("--title", default="MEM1 episodes", help="the page's title")
    parser.set_defaults(func=_cmd_view)
    return parser


def _cmd_view(args: argparse.Namespace) -> int:
    from verl_mem1.viewer.load import load_episodes
    from verl_mem1.viewer.page import write_page

    try:
        episodes = load_episodes(args.episodes, limit=args.limit)
        page = write_page(
            episodes, args.out, tokenizer=args.tokenizer, mask_episode=args.mask_episode, title=args.title
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"mem1 view: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {page} ({len(episodes)} episodes); open it in a browser")
    return 0
