"""``python -m verl_mem1.train +recipe=NAME [overrides]``: one launcher for every recipe.

``recipe=tiny`` runs the single-machine trainer (``mem1 train``: CPU or one GPU). Any other recipe (``qa``,
``websearch``) runs verl's own trainer (``verl.trainer.main_ppo``) on ``recipes/NAME.yaml`` with the MEM1 plug-in,
e.g. on a cluster: ``ray job submit --working-dir . -- python -m verl_mem1.train +recipe=qa data.train_files=...``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def split_recipe(argv: Sequence[str], default: str = "qa") -> tuple[str, list[str]]:
    """Take ``recipe=NAME`` / ``+recipe=NAME`` out of Hydra-style arguments."""
    recipe, rest = default, []
    for arg in argv:
        if arg.startswith(("recipe=", "+recipe=")):
            recipe = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return recipe, rest


def main(argv: Sequence[str] | None = None) -> int:
    from verl_mem1.training.train_cli import default_config_dir
    from verl_mem1.training.train_cli import main as train_main

    recipe, rest = split_recipe(sys.argv[1:] if argv is None else argv)
    if recipe == "tiny":
        return int(train_main(["--recipe", "tiny", *rest]) or 0)
    recipes = default_config_dir()
    if not (recipes / f"{recipe}.yaml").exists():
        print(f"verl_mem1.train: no recipe {recipe!r} in {recipes}", file=sys.stderr)
        return 2
    if not any(a.startswith("actor_rollout_ref.rollout.agent.agent_loop_config_path=") for a in rest):
        rest.append(f"actor_rollout_ref.rollout.agent.agent_loop_config_path={recipes / 'agent_loops.yaml'}")
    from verl.trainer.main_ppo import main as verl_main  # a Hydra main: it reads sys.argv

    sys.argv = [sys.argv[0], "--config-path", str(recipes), "--config-name", recipe, *rest]
    verl_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
