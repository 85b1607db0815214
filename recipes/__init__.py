"""The Hydra recipes, importable as ``verl_mem1.recipes`` (``verl_mem1/recipes`` links here), so a wheel install ships
them and Hydra finds them on its search path as ``pkg://verl_mem1.recipes``; and the two functions that read them
(``recipe_names``, ``compose_config``), used by ``mem1 train``/``mem1 sft``, the demo and the tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

RECIPES_PACKAGE = __name__
RECIPES = f"pkg://{RECIPES_PACKAGE}"


def recipe_names() -> list[str]:
    """The shipped primary recipes (YAML files with a ``defaults:`` list; not e.g. the agent-loop list)."""
    from importlib.resources import files

    found = []
    for entry in sorted(files(RECIPES_PACKAGE).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml") and any(
            line.startswith("defaults:") for line in entry.read_text(encoding="utf-8").splitlines()
        ):
            found.append(entry.name[: -len(".yaml")])
    return found


def compose_config(recipe: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose a shipped recipe with ``overrides`` outside any Hydra app (tests, notebooks, ``mem1 eval``).

    Works inside a running Hydra app too: an initialised global Hydra is set aside and restored afterwards.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    def run() -> DictConfig:
        with initialize_config_module(config_module=RECIPES_PACKAGE, version_base=None):
            return compose(config_name=recipe, overrides=list(overrides))

    if not GlobalHydra.instance().is_initialized():
        return run()
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        return run()
    finally:
        restore_gh_from_backup(backup)
