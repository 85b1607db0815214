"""The ``mem1`` command: one entry point, one module per subcommand.

Each module (``rollout``, ``compose``, ``webshop_tasks``, ``evaluate``, ``train``, ``sft``, ``parity``, ``report``,
``compare``, ``view``, ``demo``, ``tiny_model``, ``model``; the environment servers' ``corpus``, ``index`` and
``serve`` come from ``env_servers.commands``) registers its arguments with an ``add_*_command(subparsers)`` and
handles them with a ``_cmd_*`` function that imports the heavy dependencies (torch, transformers, faiss, fastapi, ...)
only when it runs, so ``mem1 --help`` stays fast. The library code they call lives in the rest of ``verl_mem1``, which
does not import this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from env_servers.commands import add_server_commands
    from verl_mem1.cli.compare import add_compare_command
    from verl_mem1.cli.compose import add_compose_command
    from verl_mem1.cli.curve import add_curve_command
    from verl_mem1.cli.demo import add_demo_command
    from verl_mem1.cli.evaluate import add_eval_command
    from verl_mem1.cli.model import add_model_command
    from verl_mem1.cli.parity import add_parity_command
    from verl_mem1.cli.report import add_report_command
    from verl_mem1.cli.rollout import add_rollout_command
    from verl_mem1.cli.sft import add_sft_command
    from verl_mem1.cli.tiny_model import add_tiny_model_command
    from verl_mem1.cli.train import add_train_command
    from verl_mem1.cli.trajectories import add_trajectories_command
    from verl_mem1.cli.view import add_view_command
    from verl_mem1.cli.webshop_tasks import add_webshop_tasks_command

    parser = argparse.ArgumentParser(
        prog="mem1",
        description="MEM1 on verl: constant-memory multi-turn agents — rollout, evaluation, environment servers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_tiny_model_command(sub)
    add_model_command(sub)
    add_rollout_command(sub)
    add_compose_command(sub)
    add_webshop_tasks_command(sub)
    add_eval_command(sub)
    add_curve_command(sub)
    add_compare_command(sub)
    add_train_command(sub)
    add_sft_command(sub)
    add_trajectories_command(sub)
    add_parity_command(sub)
    add_report_command(sub)
    add_view_command(sub)
    add_demo_command(sub)
    add_server_commands(sub)  # corpus, index, serve
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "on_ray", False):  # `mem1 serve SERVER ... --on-ray`: the same command, in a Ray actor
        from env_servers.on_ray import serve_on_ray, strip_on_ray_flags

        command = strip_on_ray_flags(argv[argv.index("serve") + 1 :])
        print(serve_on_ray(command, name=args.ray_name, num_cpus=args.ray_cpus))
        return 0
    forward = getattr(args, "accepts_unknown", None)  # e.g. `mem1 train` hands the rest to Hydra
    if forward:
        setattr(args, forward, unknown)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
