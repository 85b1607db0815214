"""``mem1 rollout``: run MEM1 episodes of any model on a task file against a retrieval or WebShop server.

Also the options and the set-up shared by the commands that generate (``mem1 eval`` uses them too): the model
and backend, the environment and its tasks, and the episode settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from verl_mem1.envs import ENV_SPECS


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Model/backend options shared by the commands that generate."""
    parser.add_argument(
        "--model",
        required=True,
        help="Hugging Face model name or local path, or the URL of an OpenAI-compatible server",
    )
    parser.add_argument(
        "--llm-url",
        default=None,
        help="OpenAI-compatible server (e.g. `vllm serve`, `mem1 serve llm`) base URL; default: run the model locally",
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer name or path (default: --model)")
    parser.add_argument("--device", default="cpu", help="local backend device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-batch-size", type=int, default=16, help="local backend: episodes decoded together")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the local backend")


def add_episode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--context", default="mem1", help="context policy: mem1, full or window:K (default mem1)")
    parser.add_argument(
        "--tags", default=None, help="tag set: paper (<IS>, <query>, ...) or search_r1; webshop for --env webshop"
    )
    parser.add_argument("--max-turns", type=int, default=None, help="QA: 6, or 20 for 8+ objectives; WebShop: 15")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="tokens generated per turn at most")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=-1)
    parser.add_argument("--topk-docs", type=int, default=3, help="documents retrieved per query")
    parser.add_argument(
        "--on-invalid", choices=["continue", "end"], default="continue", help="what an invalid action does"
    )
    parser.add_argument(
        "--invalid-penalty", type=float, default=0.0, help="subtracted from the reward once per invalid turn"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="episodes in flight at once")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N tasks")


def add_rollout_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mem1 rollout`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "rollout",
        help="run MEM1 episodes and write episode records (JSONL)",
        description="Run episodes of a model on tasks against a retrieval server; write one JSON record per episode.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_backend_arguments(parser)
    add_environment_arguments(parser)
    add_episode_arguments(parser)
    parser.add_argument("--out", required=True, help="episodes JSONL to write")
    parser.set_defaults(func=_cmd_rollout)
    return parser


def add_environment_arguments(parser: argparse.ArgumentParser) -> None:
    """Which environment the episodes run in, and the tasks for it."""
    parser.add_argument(
        "--env", choices=list(ENV_SPECS), default="retrieval", help="QA over a search server, or WebShop"
    )
    parser.add_argument(
        "--tasks", default=None, help="verl RL parquet, or JSONL with question(s) and answer(s) (QA: required)"
    )
    parser.add_argument("--retriever", default=None, help="retrieval or web search server URL (QA: required)")
    parser.add_argument(
        "--webshop",
        default="auto",
        metavar="URL",
        help="WebShop server URL (`mem1 serve webshop`); auto: serve the bundled 100-product shop in-process",
    )
    parser.add_argument(
        "--goals", default="0:50", metavar="START:STOP", help="WebShop goals to play when --tasks is not given"
    )


def mem1_config(args: argparse.Namespace):
    """The run's ``Mem1Config`` from the command-line options (the ``mem1:`` settings a training recipe holds)."""
    from verl_mem1.config import Mem1Config

    return Mem1Config(
        env=args.env,
        retriever_url=args.retriever or "http://127.0.0.1:8000",
        webshop_url=args.webshop,
        topk=args.topk_docs,
        context=args.context,
        tags=args.tags,
        max_turns=args.max_turns,
        max_new_tokens=args.max_new_tokens,
        on_invalid=args.on_invalid,
        invalid_action_penalty=args.invalid_penalty,
    )


def make_environment(args: argparse.Namespace, mem1=None):
    """The environment and its tasks: (env, tasks). ``--webshop auto`` starts the bundled shop for this run."""
    import atexit
    import contextlib

    from verl_mem1.envs import env_spec
    from verl_mem1.records import load_tasks
    from verl_mem1.rollout import configure

    mem1 = mem1 or mem1_config(args)
    spec = env_spec(args.env)
    if spec.server_tasks is None:  # QA: a task file and a retrieval (or web search) server
        if not args.retriever or not args.tasks:
            raise ValueError(f"--env {spec.name} needs --tasks and --retriever")
        return configure.make_environment(mem1), load_tasks(args.tasks, limit=args.limit)
    url = args.webshop
    if url == "auto":
        from env_servers.bundled import serve_bundled

        stack = contextlib.ExitStack()
        atexit.register(stack.close)
        url = serve_bundled(spec.servers[0], stack, Path("."))
    if args.tasks:
        return configure.make_environment(mem1, url), load_tasks(args.tasks, limit=args.limit)
    tasks = spec.fetch_tasks(url, args.goals)
    return configure.make_environment(mem1, url), tasks[: args.limit] if args.limit else tasks


def make_backend(args: argparse.Namespace):
    """Build the backend and tokenizer the options ask for (a URL in --model means a served model)."""
    from transformers import AutoTokenizer

    llm_url, model = args.llm_url, args.model
    if model.startswith(("http://", "https://")):
        from verl_mem1.rollout.backends.openai_http import served_model_name

        llm_url, model = model, served_model_name(model)
    if llm_url:
        from verl_mem1.rollout.backends.openai_http import OpenAICompletionsBackend

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or model)
        eos = {tokenizer.eos_token_id} - {None}
        return OpenAICompletionsBackend(llm_url, model, eos_token_ids=eos), tokenizer
    from verl_mem1.rollout.backends.hf_local import HFLocalBackend

    backend = HFLocalBackend(
        args.model, device=args.device, dtype=args.dtype, max_batch_size=args.max_batch_size, seed=args.seed
    )
    return backend, backend.tokenizer


def episode_config_of_args(args: argparse.Namespace, mem1=None):
    """The episode settings for each task (``rollout.configure.episode_config`` with the sampling options)."""
    import functools

    from verl_mem1.rollout import configure

    return functools.partial(
        configure.episode_config,
        mem1 or mem1_config(args),
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
    )


def setup_run(args: argparse.Namespace, command: str):
    """Config, tasks, backend, tokenizer and environment for a generating command; None after a clear error."""
    from verl_mem1.rollout.environment import EnvServerError

    try:
        mem1 = mem1_config(args)
        config = episode_config_of_args(args, mem1)
        env, tasks = make_environment(args, mem1)
        backend, tokenizer = make_backend(args)
    except (
        ValueError,
        OSError,
        RuntimeError,
        EnvServerError,
    ) as exc:  # ConfigError is a ValueError  # bad options/files, unreachable server
        print(f"mem1 {command}: {exc}", file=sys.stderr)
        return None
    return config, tasks, backend, tokenizer, env


def _cmd_rollout(args: argparse.Namespace) -> int:
    import asyncio

    from verl_mem1.rollout.runner import append_episode, run_episodes
    from verl_mem1.tasks.rewards import answer_reward

    run = setup_run(args, "rollout")
    if run is None:
        return 2
    config, tasks, backend, tokenizer, env = run
    reward_fn = answer_reward("em", "sum")  # the paper's reward; WebShop episodes take the shop's instead
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    async def main():
        with out.open("w", encoding="utf-8") as fh:
            try:
                return await run_episodes(
                    tasks,
                    backend,
                    env,
                    tokenizer,
                    config,
                    concurrency=args.concurrency,
                    reward_fn=reward_fn,
                    on_episode=lambda record: append_episode(fh, record),
                )
            finally:
                await env.aclose()

    records = asyncio.run(main())
    turns = sum(len(r.turns) for r in records)
    peak = max(r.peak_tokens for r in records)
    print(f"wrote {len(records)} episodes ({turns} turns, peak {peak} tokens) to {out}")
    return 0
