"""Checkpoints in verl's layout, and the RNG state that makes a resumed run continue exactly.

``{root}/global_step_N/`` holds ``actor/`` (a ``from_pretrained`` folder: model and tokenizer, so ``mem1 eval
--model .../actor`` and verl load it), ``critic/`` when there is one, ``trainer_state.pt`` (optimizers, schedulers,
KL controller, data position, RNG states) and ``config.yaml``; ``latest_checkpointed_iteration.txt`` names the
last one, as verl's own trainer writes it.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRACKER_FILE = "latest_checkpointed_iteration.txt"  # verl's checkpoint tracker
STEP_DIR = "global_step_{}"
STATE_FILE = "trainer_state.pt"


def rng_state(extra: dict[str, torch.Generator]) -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in extra.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], extra: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in extra.items():
        if k in state.get("generators", {}):
            g.set_state(state["generators"][k])


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint ``latest_checkpointed_iteration.txt`` names under ``root`` (verl's convention), if any."""
    tracker = Path(root) / TRACKER_FILE
    if not tracker.is_file():
        return None
    try:
        step = int(tracker.read_text().strip())
    except ValueError:
        return None
    path = Path(root) / STEP_DIR.format(step)
    return path if (path / STATE_FILE).is_file() else None


def write_checkpoint(
    root: Path,
    step: int,
    *,
    policy: Any,
    tokenizer: Any,
    state: dict[str, Any],
    config_yaml: str,
    critic: Any = None,
    keep: int | None = None,
) -> Path:
    """Write ``global_step_{step}/`` atomically (a temporary folder renamed into place), point the tracker file at
    it, and prune all but the last ``keep`` checkpoints."""
    path = root / STEP_DIR.format(step)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy.save_pretrained(tmp / "actor")
    tokenizer.save_pretrained(tmp / "actor")
    if critic is not None:
        critic.save_pretrained(tmp / "critic")
    torch.save(state, tmp / STATE_FILE)
    (tmp / "config.yaml").write_text(config_yaml)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    (root / TRACKER_FILE).write_text(str(step))
    if keep:
        steps = sorted(
            int(p.name.rsplit("_", 1)[1])
            for p in root.glob("global_step_*")
            if p.is_dir() and p.name.rsplit("_", 1)[1].isdigit()
        )
        for old in steps[: -int(keep)]:
            shutil.rmtree(root / STEP_DIR.format(old), ignore_errors=True)
    return path


def read_state(path: Path) -> dict[str, Any]:
    """The ``trainer_state.pt`` of checkpoint ``path`` (loaded on the CPU)."""
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
