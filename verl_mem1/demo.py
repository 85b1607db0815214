"""``mem1 demo``: the whole pipeline on one CPU with the tiny model and the bundled HotpotQA sample.

Builds the mini Wikipedia corpus and its BM25 index, serves it on loopback, runs episodes of a random
tiny Qwen2 model with each context policy, and prints per-turn context sizes. The tiny model's answers
are meaningless (its weights are random); the demo shows the machinery: MEM1's context stays flat while
the full-context baseline grows every turn.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
from pathlib import Path

POLICIES = ("mem1", "full", "window:2")


def bundled_hotpotqa(split: str = "dev") -> Path:
    return Path(str(importlib.resources.files("verl_mem1") / "data" / "hotpotqa" / f"{split}.jsonl"))


def context_size_table(results: dict[str, list]) -> str:
    """Markdown table: mean context tokens at each turn, one column per policy."""
    max_turns = max(len(r.turns) for records in results.values() for r in records)
    lines = ["| turn | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for t in range(max_turns):
        cells = []
        for records in results.values():
            sizes = [len(r.turns[t].context_ids) for r in records if len(r.turns) > t]
            cells.append(f"{sum(sizes) / len(sizes):.0f}" if sizes else "-")
        lines.append(f"| {t + 1} | " + " | ".join(cells) + " |")
    peaks = [f"{max(r.peak_tokens for r in records)}" for records in results.values()]
    lines.append("| peak | " + " | ".join(peaks) + " |")
    return "\n".join(lines)


def run_demo(
    out_dir: str | Path,
    *,
    num_questions: int = 4,
    max_turns: int = 6,
    max_new_tokens: int = 48,
    policies: tuple[str, ...] = POLICIES,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, list]:
    from env_servers.background import BackgroundServer
    from env_servers.retrieval.corpus import build_hotpotqa_corpus
    from env_servers.retrieval.index import build_index, load_retriever
    from env_servers.retrieval.server import create_app
    from verl_mem1.rollout.backends.hf_local import HFLocalBackend
    from verl_mem1.rollout.environment import RetrievalEnvironment
    from verl_mem1.rollout.episode import EpisodeConfig
    from verl_mem1.rollout.runner import run_episodes, write_jsonl
    from verl_mem1.rollout.tasks import load_tasks
    from verl_mem1.tiny_model import build_tiny_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "tiny-model"
    if not (model_dir / "config.json").exists():
        print(f"[1/4] writing the tiny model to {model_dir}")
        build_tiny_model(model_dir, seed=seed)
    corpus = out / "hotpotqa-corpus.jsonl"
    index_dir = out / "index-bm25"
    if not (index_dir / "meta.json").exists():
        n = build_hotpotqa_corpus(None, corpus)
        print(f"[2/4] built the HotpotQA mini-corpus ({n} paragraphs) and its BM25 index")
        build_index(corpus, index_dir, encoder="bm25", show_progress=progress)
    tasks = load_tasks(bundled_hotpotqa("dev"), limit=num_questions)
    backend = HFLocalBackend(model_dir, seed=seed)
    results: dict[str, list] = {}
    with BackgroundServer(create_app(load_retriever(index_dir))) as server:
        print(f"[3/4] retrieval server on {server.url}; running {len(tasks)} episodes per context policy")
        for policy in policies:
            config = EpisodeConfig(max_turns=max_turns, max_new_tokens=max_new_tokens, context=policy)
            env = RetrievalEnvironment(server.url)

            async def go(config=config, env=env, policy=policy):
                try:
                    return await run_episodes(
                        tasks, backend, env, backend.tokenizer, config, progress=progress, desc=policy
                    )
                finally:
                    await env.aclose()

            results[policy] = asyncio.run(go())
            write_jsonl(results[policy], out / f"episodes_{policy.replace(':', '')}.jsonl")
    table = context_size_table(results)
    (out / "context_sizes.md").write_text(table + "\n", encoding="utf-8")
    print("[4/4] mean context tokens at each turn (Qwen2.5 tokens):\n")
    print(table)
    print(
        "\nThe tiny model has random weights: its actions are gibberish (invalid actions get an explanatory"
        "\nobservation and the episode goes on) and its answers are meaningless. What the demo shows is the"
        "\nmachinery: with `mem1` each context is the prompt plus only the last turn, so it stays flat;"
        f"\n`full` keeps everything and grows every turn. Episode records are in {out}/episodes_*.jsonl."
    )
    return results


def add_demo_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on CPU with the tiny model and bundled data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="outputs/demo", help="working directory (default outputs/demo)")
    parser.add_argument("--questions", type=int, default=4, help="bundled HotpotQA dev questions to run (default 4)")
    parser.add_argument("--max-turns", type=int, default=6, help="turns per episode (default 6)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="tokens per turn (default 48)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo(
        args.out,
        num_questions=args.questions,
        max_turns=args.max_turns,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    return 0
