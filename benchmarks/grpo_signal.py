"""How much signal a GRPO step would get: sampled episodes of a model on training tasks, at several temperatures.

GRPO learns only from groups whose episodes score differently. This plays ``--tasks`` 2-objective HotpotQA training
tasks (composed as ``make learn`` composes them: a turn budget of objectives + 2, stated in the prompt) ``--group``
times each at every ``--temperatures`` value, against the bundled BM25 retriever, and prints per temperature: the
share of episodes with an exact match, the mean EM, the share of groups whose EM differs (the answer signal) and
whose penalised reward differs (EM minus ``--penalty`` per invalid turn, as ``recipes/experiment/smol_qa.yaml``
scores), the invalid-action rate, and the seconds it took.

    .venv/bin/python benchmarks/grpo_signal.py --model outputs/demo/sft/global_step_12/huggingface
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def play(model: str, tasks, url: str, out: Path, *, temperature: float, group: int, max_new_tokens: int, seed: int):
    """Every task ``group`` times at ``temperature`` through ``mem1 eval``'s harness (episodes and metrics under
    ``out``): the per-episode metrics rows and the seconds it took."""
    from verl_mem1.config import Mem1Config
    from verl_mem1.evaluation.harness import evaluate
    from verl_mem1.rollout.backends.hf_local import HFLocalBackend
    from verl_mem1.rollout.configure import episode_config, make_environment

    backend = HFLocalBackend(model, seed=seed, max_batch_size=32)
    mem1 = Mem1Config(max_turns=tasks[0].num_objectives + 2, max_new_tokens=max_new_tokens)
    episodes = [task for task in tasks for _ in range(group)]

    async def go():
        env = make_environment(mem1, url)
        try:
            return await evaluate(episodes, backend, env, backend.tokenizer,
                                  episode_config(mem1, temperature=temperature), out, concurrency=32,
                                  progress=False)  # fmt: skip
        finally:
            await env.aclose()

    metrics = asyncio.run(go())
    return metrics["episodes"], metrics["wall_time_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Hugging Face folder (e.g. the SFT checkpoint)")
    parser.add_argument("--tasks", type=int, default=24, help="training tasks (default 24)")
    parser.add_argument("--group", type=int, default=4, help="episodes per task (default 4: smol_qa's rollout.n)")
    parser.add_argument("--objectives", type=int, default=2)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7])
    parser.add_argument("--max-new-tokens", type=int, default=96, help="per turn (default 96, as smol_qa)")
    parser.add_argument("--penalty", type=float, default=0.1, help="per invalid turn (smol_qa's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from env_servers.bundled import serve_bundled
    from verl_mem1.records import load_tasks
    from verl_mem1.tasks.compose import compose_tasks, write_tasks_parquet
    from verl_mem1.tasks.sources import load_source

    print("| temperature | episodes | episodes with EM > 0 | mean EM | groups with EM spread "
          "| groups with reward spread | invalid actions / turn | seconds |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        rows = compose_tasks([load_source("hotpotqa-train")], objectives=args.objectives, count=args.tasks,
                             seed=args.objectives, max_turns=args.objectives + 2)  # fmt: skip
        tasks = load_tasks(write_tasks_parquet(rows, Path(tmp) / "tasks.parquet"))
        url = serve_bundled("retrieval", stack, Path(tmp))
        for temperature in args.temperatures:
            metrics, seconds = play(args.model, tasks, url, Path(tmp) / f"t{temperature:g}", temperature=temperature,
                                    group=args.group, max_new_tokens=args.max_new_tokens, seed=args.seed)  # fmt: skip
            by_task: dict[str, list] = {}
            for m in metrics:
                by_task.setdefault(m["id"], []).append(m)
            groups = list(by_task.values())
            rewards = [[m["em"] - args.penalty * m["invalid_actions"] for m in g] for g in groups]
            em_spread = sum(len({m["em"] for m in g}) > 1 for g in groups) / len(groups)
            reward_spread = sum(len(set(r)) > 1 for r in rewards) / len(groups)
            invalid = sum(m["invalid_actions"] for m in metrics) / max(1, sum(m["turns"] for m in metrics))
            print(
                f"| {temperature:g} | {len(metrics)} | {sum(m['em'] > 0 for m in metrics) / len(metrics):.3f} "
                f"| {statistics.mean(m['em'] for m in metrics):.3f} | {em_spread:.3f} | {reward_spread:.3f} "
                f"| {invalid:.3f} | {seconds:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
