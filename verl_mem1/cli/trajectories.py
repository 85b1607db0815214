"""``mem1 trajectories``: scripted teacher episodes for supervised fine-tuning, as ordinary episode records.

``--policy oracle`` plays every task with a scripted teacher through the real episode loop, so the JSONL is exactly
what ``mem1 rollout`` writes and ``mem1 sft`` reads: token-exact, on the layout RL trains on.

- QA (``rollout.backends.oracle.OracleBackend``): search each question, keep every answer found in the internal
  state, answer all at the end. Only episodes whose answers are all right (exact match 1.0) and grounded (each
  answer is in the results of its own search) are written, unless ``--keep-ungrounded``.
- WebShop (``--env webshop``, ``rollout.backends.webshop_oracle.WebShopOracleBackend``): search with the
  instruction, open the goal product, choose its options, buy. Episodes the shop scores at least
  ``--min-reward`` (default 1.0) are written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from verl_mem1.cli.compose import _positive_int
from verl_mem1.envs import ENV_SPECS, env_spec

POLICIES = ("oracle",)


def add_trajectories_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 trajectories`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "trajectories",
        help="write scripted teacher episodes (oracle) as episode records for SFT",
        description=(
            "Play QA tasks or WebShop goals with a scripted teacher through the MEM1 episode loop and write the "
            "episodes that are right and grounded (QA) or well rewarded (WebShop) as episode records (JSONL, the "
            "format of mem1 rollout), for mem1 sft."
        ),
        epilog=(
            "Example: mem1 compose --source hotpotqa-train --objectives 2 --seed 0 --out tasks.parquet; "
            "mem1 trajectories --policy oracle --tasks tasks.parquet --retriever http://127.0.0.1:8000 "
            "--tokenizer HuggingFaceTB/SmolLM2-135M-Instruct --out episodes.jsonl. WebShop: mem1 trajectories "
            "--policy oracle --env webshop --goals 1500: --tokenizer DIR --out shop.jsonl"
        ),
    )
    parser.add_argument("--policy", required=True, choices=POLICIES, help="the teacher: oracle (gold answers)")
    parser.add_argument("--env", choices=list(ENV_SPECS), default="retrieval", help="QA (default) or WebShop")
    parser.add_argument(
        "--tasks",
        help="verl RL parquet (mem1 compose, mem1 webshop-tasks) or JSONL with question(s)/answer(s); QA: required",
    )
    parser.add_argument("--retriever", metavar="URL", help="retrieval server URL (mem1 serve retrieval); QA: required")
    parser.add_argument(
        "--webshop", default="auto", metavar="URL", help="WebShop server URL; auto (default): the bundled shop"
    )
    parser.add_argument("--goals", default="0:", metavar="START:STOP", help="WebShop goals without --tasks (0:)")
    parser.add_argument(
        "--min-reward", type=float, default=1.0, help="WebShop: keep episodes the shop scores at least this (1.0)"
    )
    parser.add_argument(
        "--tokenizer", required=True, help="tokenizer name or path of the student model (its chat template)"
    )
    parser.add_argument("--out", required=True, help="episodes JSONL to write (the kept episodes)")
    parser.add_argument("--tags", default=None, help="tag set: paper or search_r1 (default: the task's own, or paper)")
    parser.add_argument("--context", default="mem1", help="context policy: mem1, full or window:K (default mem1)")
    parser.add_argument(
        "--max-turns", type=_positive_int, default=None, help="turn budget (default: the task's own, else 6)"
    )
    parser.add_argument(
        "--max-new-tokens", type=_positive_int, default=512, help="tokens per turn at most (default 512)"
    )
    parser.add_argument("--topk-docs", type=_positive_int, default=3, help="documents retrieved per query (default 3)")
    parser.add_argument("--limit", type=_positive_int, default=None, help="use only the first N tasks")
    parser.add_argument("--concurrency", type=_positive_int, default=16, help="episodes in flight at once (default 16)")
    parser.add_argument(
        "--keep-ungrounded",
        action="store_true",
        help="also write right episodes whose answers the searches did not return",
    )
    # what the shared rollout helpers (mem1_config, episode_config_of_args, make_environment) read; fixed for a teacher
    parser.set_defaults(
        func=_cmd_trajectories,
        on_invalid="continue",
        invalid_penalty=0.0,
        seed=0,
        temperature=1.0,
        top_p=1.0,
        top_k=-1,
    )
    return parser


def _setup(args: argparse.Namespace):
    """Episode settings, tasks, environment, tokenizer and oracle; raises on a bad option, file or server."""
    import asyncio
    import dataclasses

    from transformers import AutoTokenizer

    from verl_mem1.cli.rollout import episode_config_of_args, make_environment, mem1_config
    from verl_mem1.rollout import configure
    from verl_mem1.rollout.backends.oracle import OracleBackend
    from verl_mem1.rollout.backends.webshop_oracle import WebShopOracleBackend
    from verl_mem1.rollout.environment import STARTUP_RETRIES

    mem1 = mem1_config(args)
    config = episode_config_of_args(args, mem1)
    env, tasks = make_environment(args, mem1)
    if not tasks:
        raise ValueError("no tasks to play")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    shopping = env_spec(args.env).scores_episodes
    oracle = (WebShopOracleBackend if shopping else OracleBackend)(tasks, tokenizer, config)

    async def probe():  # one call now, or every episode would end as an environment error
        probe_env = configure.make_environment(dataclasses.replace(mem1, env_retries=STARTUP_RETRIES), env.url)
        try:
            await (probe_env.goals("0:1") if shopping else probe_env.search([tasks[0].questions[0]]))
        finally:
            await probe_env.aclose()

    asyncio.run(probe())
    return config, tasks, env, tokenizer, oracle


def _cmd_trajectories(args: argparse.Namespace) -> int:
    import asyncio

    from verl_mem1.rollout.backends.oracle import (
        grounded_objectives,
        oracle_reward,
        run_oracle_episodes,
        worth_imitating,
    )
    from verl_mem1.rollout.environment import EnvServerError
    from verl_mem1.rollout.runner import append_episode

    try:
        config, tasks, env, tokenizer, oracle = _setup(args)
    except (ValueError, OSError, RuntimeError, EnvServerError) as exc:  # ConfigError is a ValueError
        print(f"mem1 trajectories: error: {exc}", file=sys.stderr)
        return 2
    shopping = env_spec(args.env).scores_episodes
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    counts = {"right": 0, "grounded": 0}

    def worth(record) -> bool:
        if shopping:
            return (record.reward or 0.0) >= args.min_reward
        counts["right"] += record.reward == 1.0
        counts["grounded"] += all(grounded_objectives(record, tokenizer))
        return worth_imitating(record, tokenizer, keep_ungrounded=args.keep_ungrounded)

    async def main():
        with out.open("w", encoding="utf-8") as fh:

            def keep(record):
                if worth(record):
                    kept.append(record)
                    append_episode(fh, record)

            try:
                return await run_oracle_episodes(
                    tasks, env, tokenizer, config, concurrency=args.concurrency, on_episode=keep, backend=oracle,
                    reward_fn=None if shopping else oracle_reward,
                )  # fmt: skip
            finally:
                await env.aclose()

    records = asyncio.run(main())
    total = len(records)
    if shopping:
        print(f"kept {len(kept)}/{total} oracle episodes (reward >= {args.min_reward}) in {out}")
    else:
        print(
            f"kept {len(kept)}/{total} oracle episodes (exact match 1.0: {counts['right']}, grounded: "
            f"{counts['grounded']}{', ungrounded kept' if args.keep_ungrounded else ''}) in {out}"
        )
    if not kept:
        print("mem1 trajectories: no episode was kept", file=sys.stderr)
        return 1
    turns = sum(len(r.turns) for r in kept) / len(kept)
    peak = sum(r.peak_tokens for r in kept) / len(kept)
    print(
        f"kept episodes: mean {turns:.2f} turns, mean peak {peak:.0f} tokens (max {max(r.peak_tokens for r in kept)})"
    )
    return 0
