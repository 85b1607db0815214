"""What every single-machine trainer (RL and SFT) sets up the same way from a verl config: the device and verl's
``Tracking`` logger."""

from __future__ import annotations

from typing import Any

import torch


def pick_device(cfg: Any) -> torch.device:
    """``trainer.device``; ``auto`` is CUDA when available, else the CPU."""
    device = str(cfg.trainer.device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def make_tracking(cfg: Any):
    """verl's ``Tracking`` over ``trainer.logger`` (a name or a list), with the resolved config attached."""
    from omegaconf import OmegaConf
    from verl.utils.tracking import Tracking

    loggers = cfg.trainer.logger
    return Tracking(
        project_name=str(cfg.trainer.project_name),
        experiment_name=str(cfg.trainer.experiment_name),
        default_backend=[loggers] if isinstance(loggers, str) else list(loggers),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
