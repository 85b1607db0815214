"""The picture of MEM1's training trick: one episode packed as ``[prompt | seg_1 | ... | seg_T]`` and the block-sparse
attention mask that lets a single forward score every turn under the context it was sampled in.

Both come from the training code itself (``training/layout.pack_episode`` and ``training/attention.mask_rule``), so
the picture shows what the trainer does, not a drawing of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from verl_mem1.records import EpisodeRecord
from verl_mem1.training.attention import mask_rule
from verl_mem1.training.layout import PackedSample, pack_episode

MAX_PIXELS = 1024  # longer samples are drawn at evenly spaced query and key positions


def mask_codes(record: EpisodeRecord, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """The packed sample's mask, coloured by the key's segment.

    Args:
        record: the episode to pack.
        max_pixels: the most positions drawn per axis.

    Returns:
        ``(codes, positions)``: ``codes`` is ``[S, S]`` int, 0 where query (row) may not attend key (column),
        1 + the key's segment id where it may (1 = the prompt, 1 + t = turn t's segment); ``positions`` the ``S``
        packed positions drawn (all of them when the sample has at most ``max_pixels`` tokens).
    """
    return _codes(pack_episode(record), max_pixels)


def _codes(sample: PackedSample, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    length = sample.length
    positions = torch.arange(length) if length <= max_pixels else torch.linspace(0, length - 1, max_pixels).long()
    allowed = mask_rule(sample.segment_ids, sample.prompt_segment_ids, positions[:, None], positions[None, :])
    codes = torch.where(allowed, sample.segment_ids[positions][None, :] + 1, 0)
    return codes.numpy(), positions.numpy()


def draw_mask(record: EpisodeRecord, out_png: str | Path, max_pixels: int = MAX_PIXELS) -> Path:
    """Draw ``mask_codes`` to a PNG, with the segment boundaries marked, and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    sample = pack_episode(record)
    codes, positions = _codes(sample, max_pixels)
    segments = int(codes.max())
    palette = plt.get_cmap("tab10")
    colours = ["#ffffff", "#9e9e9e"] + [palette(i % 10) for i in range(max(segments - 1, 0))]
    boundaries = [int(i) for i in torch.nonzero(sample.segment_ids[1:] != sample.segment_ids[:-1]).flatten() + 1]
    fig, ax = plt.subplots(figsize=(6.4, 6.4), constrained_layout=True)
    ax.imshow(codes, cmap=ListedColormap(colours[: segments + 1]), interpolation="nearest", vmin=0, vmax=segments)
    scale = (len(positions) - 1) / max(sample.length - 1, 1)
    for b in boundaries:
        ax.axhline(b * scale - 0.5, color="black", linewidth=0.4)
        ax.axvline(b * scale - 0.5, color="black", linewidth=0.4)
    ticks = [0, *boundaries]
    ax.set_xticks([t * scale for t in ticks], [str(t) for t in ticks], rotation=90, fontsize=7)
    ax.set_yticks([t * scale for t in ticks], [str(t) for t in ticks], fontsize=7)
    ax.set_xlabel("key position (packed)")
    ax.set_ylabel("query position (packed)")
    turns = len(boundaries)
    ax.set_title(
        f"episode {record.id}: {sample.length} packed tokens, prompt + {turns} turn segments\n"
        "grey: the prompt, seen by every segment; colour: a turn's segment (its context after the prompt, then what\n"
        "it generated), seen causally by itself only",
        fontsize=8,
    )
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
