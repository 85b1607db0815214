"""The episodes SFT reads and the loss it minimises, as plain functions (``mem1 sft`` trains with verl's own SFT
trainer: ``training/verl_plugin/sft.py``).

An episode record (``mem1 rollout``/``eval`` output filtered by reward, or ``mem1 trajectories --policy oracle``)
is packed exactly as the RL trainer packs it (``layout.pack_episode``): every turn's context copy and its
generated tokens, positions restarting after the prompt, each segment attending to the prompt and itself. The
loss is the mean negative log-likelihood (at temperature 1) of the **generated tokens only**: the prompt, the
observations and the copied context are read, never learned. That is also the paper's SFT baseline.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from verl_mem1.config import ConfigError
from verl_mem1.training.forward import packed_logprobs_and_entropy
from verl_mem1.training.layout import PackedSample
from verl_mem1.training.streaming import streamed_logprobs_and_entropy

if TYPE_CHECKING:
    from verl_mem1.records import EpisodeRecord


def load_episodes(paths: Any, *, min_reward: float | None = None) -> list[EpisodeRecord]:
    """Episode records from JSONL files (``mem1 rollout``/``eval``/``trajectories``), keeping those that generated
    something and, with ``min_reward``, scored at least that (rejection sampling from a teacher)."""
    from verl_mem1.rollout.runner import read_episodes

    records = []
    for path in [paths] if isinstance(paths, str | Path) else list(paths or []):
        path = Path(str(path)).expanduser()
        if not path.is_file():
            raise ConfigError(f"episode file not found: {path}")
        records.extend(read_episodes(path))
    kept = [r for r in records if any(t.generated_ids for t in r.turns)]
    if min_reward is not None:
        kept = [r for r in kept if r.reward is not None and r.reward >= min_reward]
    return kept


def split_episodes(
    records: list[EpisodeRecord], val_fraction: float, seed: int
) -> tuple[list[EpisodeRecord], list[EpisodeRecord]]:
    """A seeded train/validation split: ``round(val_fraction × n)`` episodes (at least one when the fraction is
    positive and two or more episodes exist) go to validation."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"data.val_fraction={val_fraction!r}: must be in [0, 1)")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = round(val_fraction * len(records))
    if val_fraction > 0 and len(records) > 1:
        n_val = min(max(n_val, 1), len(records) - 1)
    val = {order[i] for i in range(n_val)}
    return [r for i, r in enumerate(records) if i not in val], [r for i, r in enumerate(records) if i in val]


def sft_nll(
    model: torch.nn.Module,
    sample: PackedSample,
    *,
    backend: str,
    scale: float = 1.0,
    group_tokens: int | None = None,
) -> tuple[float, int]:
    """Back-propagate ``scale × Σ −log p(generated token)`` of a packed sample (T = 1); return the unscaled sum
    and the number of generated tokens. With ``group_tokens``, group by group (``streaming.py``): the same
    gradient, memory bounded by a group. Under ``torch.no_grad`` nothing is back-propagated."""
    if group_tokens and torch.is_grad_enabled():

        def group_loss(lp: torch.Tensor, _ent: Any, _index: torch.Tensor) -> torch.Tensor:
            return -lp.sum() * scale

        lp, _ = streamed_logprobs_and_entropy(
            model, sample, group_loss, group_tokens=group_tokens, backend=backend, temperature=1.0, with_entropy=False
        )
        return float(-lp.sum()), lp.numel()
    lp, _ = packed_logprobs_and_entropy(
        model, sample, backend=backend, temperature=1.0, with_entropy=False, compile_flex=False
    )
    nll = -lp.sum()
    if torch.is_grad_enabled():
        (nll * scale).backward()
    return float(nll.detach()), lp.numel()
