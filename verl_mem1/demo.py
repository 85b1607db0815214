"""``mem1 demo``: the whole pipeline on one CPU with the tiny model and the bundled HotpotQA sample.

1. writes a random tiny Qwen2 model (real Qwen2.5 tokenizer), builds the mini Wikipedia corpus from the bundled
   HotpotQA paragraphs and its BM25 index, and serves it on loopback;
2. runs episodes on single questions with each context policy and prints the context size at every turn;
3. composes 1-, 2-, 4-, 8- and 16-objective tasks from the HotpotQA dev questions, evaluates the model with the
   mem1, full and window:1 policies, and writes a report (markdown table + PNG plot);
4. serves the bundled 100-product WebShop on loopback and evaluates the model on a few of its goals with the
   mem1 and full policies (reward, peak tokens).

The tiny model's weights are random, so its answers are meaningless; the demo shows the machinery: MEM1's context
stays flat while the full-context baseline grows with every turn and every objective.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
from collections.abc import Sequence
from pathlib import Path

TURN_POLICIES = ("mem1", "full", "window:2")
SWEEP_POLICIES = ("mem1", "full", "window:1")
SWEEP_OBJECTIVES = (1, 2, 4, 8, 16)
WEBSHOP_POLICIES = ("mem1", "full")


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


def prepare(out: Path, *, seed: int = 0, progress: bool = True) -> tuple[Path, Path]:
    """The tiny model and the bundled HotpotQA BM25 index under ``out`` (reused when already there)."""
    from env_servers.bundled import build_bundled_index
    from verl_mem1.tiny_model import build_tiny_model

    model_dir = out / "tiny-model"
    if not (model_dir / "config.json").exists():
        print(f"writing the tiny model to {model_dir}")
        build_tiny_model(model_dir, seed=seed)
    return model_dir, build_bundled_index(out, progress=progress)


def objectives_sweep(
    backend,
    url: str,
    out: Path,
    *,
    objectives: Sequence[int] = SWEEP_OBJECTIVES,
    policies: Sequence[str] = SWEEP_POLICIES,
    tasks_per_point: int = 2,
    max_new_tokens: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> tuple[str, Path]:
    """Compose N-objective tasks, evaluate every policy on them, and write the report."""
    from verl_mem1.config import Mem1Config
    from verl_mem1.evaluation.harness import evaluate
    from verl_mem1.evaluation.report import write_report
    from verl_mem1.records import load_tasks
    from verl_mem1.rollout.configure import episode_config, make_environment
    from verl_mem1.tasks.compose import compose_tasks, write_tasks_parquet
    from verl_mem1.tasks.sources import load_source

    pool = load_source("hotpotqa")
    runs = []
    for n in objectives:
        rows = compose_tasks([pool], objectives=n, count=tasks_per_point, seed=seed)
        write_tasks_parquet(rows, out / "tasks" / f"hotpotqa-{n}obj.parquet")
        tasks = load_tasks(out / "tasks" / f"hotpotqa-{n}obj.parquet")
        for policy in policies:
            run_dir = out / "eval" / f"{n}obj-{policy.replace(':', '')}"
            mem1 = Mem1Config(context=policy, max_new_tokens=max_new_tokens)
            config = episode_config(mem1)

            async def go(tasks=tasks, config=config, run_dir=run_dir, mem1=mem1):
                env = make_environment(mem1, url)
                try:
                    return await evaluate(tasks, backend, env, backend.tokenizer, config, run_dir, progress=False)
                finally:
                    await env.aclose()

            metrics = asyncio.run(go())
            if progress:
                s = metrics["summary"]
                print(f"  {n:>2} objectives, {policy:<8}: peak {s['peak_tokens']:>6.0f} tokens, EM {s['em']:.2f}")
            runs.append(run_dir)
    return write_report(runs, out / "report")


def webshop_part(
    backend, out: Path, *, goals: str = "0:4", max_turns: int = 8, max_new_tokens: int = 32, progress: bool = True
) -> dict[str, dict]:
    """Evaluate the model on WebShop goals with each policy against the bundled shop; summaries by policy."""
    from env_servers.bundled import serve_bundled
    from verl_mem1.config import Mem1Config
    from verl_mem1.evaluation.harness import evaluate
    from verl_mem1.rollout.configure import episode_config, make_environment

    summaries = {}
    with contextlib.ExitStack() as stack:
        url = serve_bundled("webshop", stack, out)
        for policy in WEBSHOP_POLICIES:
            mem1 = Mem1Config(env="webshop", context=policy, max_turns=max_turns, max_new_tokens=max_new_tokens)
            config = episode_config(mem1)

            async def go(config=config, policy=policy, mem1=mem1):
                env = make_environment(mem1, url)
                try:
                    tasks = await env.goals(goals)
                    run_dir = out / "webshop" / policy
                    return await evaluate(tasks, backend, env, backend.tokenizer, config, run_dir, progress=False)
                finally:
                    await env.aclose()

            summaries[policy] = s = asyncio.run(go())["summary"]
            if progress:
                print(
                    f"  WebShop goals {goals}, {policy:<5}: peak {s['peak_tokens']:>6.0f} tokens, "
                    f"reward {s['reward']:.2f}, {s['turns']:.0f} turns"
                )
    return summaries


def run_demo(
    out_dir: str | Path,
    *,
    num_questions: int = 4,
    max_turns: int = 6,
    max_new_tokens: int = 48,
    objectives: Sequence[int] = SWEEP_OBJECTIVES,
    tasks_per_point: int = 2,
    sweep_max_new_tokens: int = 32,
    webshop_goals: str | None = "0:4",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, list]:
    from env_servers.bundled import serve_bundled
    from verl_mem1.config import Mem1Config
    from verl_mem1.records import load_tasks
    from verl_mem1.rollout.backends.hf_local import HFLocalBackend
    from verl_mem1.rollout.configure import episode_config, make_environment
    from verl_mem1.rollout.runner import run_episodes, write_jsonl

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_dir, _ = prepare(out, seed=seed, progress=progress)
    tasks = load_tasks(bundled_hotpotqa("dev"), limit=num_questions)
    backend = HFLocalBackend(model_dir, seed=seed)
    results: dict[str, list] = {}
    with contextlib.ExitStack() as stack:
        url = serve_bundled("retrieval", stack, out, progress=progress)
        print(f"\n== 1. {len(tasks)} questions per context policy, retrieval server on {url}")
        for policy in TURN_POLICIES:
            mem1 = Mem1Config(max_turns=max_turns, max_new_tokens=max_new_tokens, context=policy)
            config = episode_config(mem1)

            async def go(config=config, policy=policy, mem1=mem1):
                env = make_environment(mem1, url)
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
        print("\nMean context tokens at each turn (Qwen2.5 tokens):\n")
        print(table)
        if objectives:
            print(f"\n== 2. {', '.join(map(str, objectives))} objectives x {', '.join(SWEEP_POLICIES)}")
            report, png = objectives_sweep(
                backend,
                url,
                out,
                objectives=objectives,
                tasks_per_point=tasks_per_point,
                max_new_tokens=sweep_max_new_tokens,
                seed=seed,
                progress=progress,
            )
            print(f"\n{report}\n\nwrote {out / 'report' / 'report.md'} and {png}")
    if webshop_goals:
        print(f"\n== 3. WebShop (bundled 100-product shop), goals {webshop_goals} x {', '.join(WEBSHOP_POLICIES)}")
        webshop_part(backend, out, goals=webshop_goals, max_new_tokens=sweep_max_new_tokens, progress=progress)
    print(
        "\nThe tiny model has random weights: its actions are gibberish (invalid actions get an explanatory"
        "\nobservation and the episode goes on) and its answers are meaningless. What the demo shows is the"
        "\nmachinery: with `mem1` each context is the prompt plus only the last turn, so it stays flat;"
        f"\n`full` keeps everything and grows every turn. Episode records are under {out}."
    )
    return results
