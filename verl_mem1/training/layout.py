"""Pack a MEM1 episode into one training sample that scores every token under the context it was sampled in.

MEM1 rebuilds its context every turn (prompt + the kept turns), so one stitched sequence would put each
turn's tokens at positions and next to neighbours the policy never saw. The packed layout is
``[prompt | seg_1 | ... | seg_T]`` with ``seg_t = context_t[P:] ⊕ generated_t``: the prompt is computed
once, every segment sees the prompt and itself only (see ``attention.py``), and every segment's positions
restart at ``P`` — so the forward reproduces each turn's rollout forward exactly, at the cost of
``P + Σ_t (|context_t| − P + |generated_t|)`` tokens instead of ``Σ_t (|context_t| + |generated_t|)``.

This module owns the layout: packing (``pack_episode``, ``pack_batch``), the predictor rule
(``predictor_positions``), segment renumbering (``renumber_segments``) and exact truncation (``truncate``). The local
trainer uses it directly; the verl plug-in's agent loop and engine (``verl_plugin/``) are thin adapters that move
its tensors through verl's batches. Nothing here knows about environments: an episode is only token ids and
recorded log-probs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # typing only: training must not pull in rollout/environment code at import time
    from verl_mem1.records import EpisodeRecord

IGNORE_INDEX = -1  # predictor_index / turn_index value at positions that hold no generated token / no turn


def record_temperature(record: EpisodeRecord) -> float:
    """The temperature the rollout's log-probs were recorded at (greedy decoding records them at T = 1)."""
    temperature = float((record.sampling or {}).get("temperature", 1.0))
    return temperature if temperature > 0 else 1.0


@dataclass
class PackedSample:
    """One episode (or, from ``pack_batch``, several) as 1-D tensors of packed length ``L``.

    ``segment_ids``: 0 for the prompt, ``t`` for the segment of the t-th turn (1-based). ``prompt_segment_ids``:
    the segment id of the prompt a token may read (0 for a single episode; per episode after ``pack_batch``).
    ``predictor_index[i]``: for a generated token at ``i``, the position whose logits predict it (``i − 1``
    inside its segment, or the last prompt position when the segment has nothing before it); −1 elsewhere.
    ``turn_index``: the record's turn index of each segment token, −1 on prompts.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    loss_mask: torch.Tensor
    rollout_logprobs: torch.Tensor
    predictor_index: torch.Tensor
    turn_index: torch.Tensor
    prompt_segment_ids: torch.Tensor
    episode_index: torch.Tensor
    prompt_len: int
    temperature: float
    prompt_lens: tuple[int, ...] = ()  # per episode; () means (prompt_len,)
    temperatures: tuple[float, ...] = ()  # per episode; () means (temperature,)

    def __post_init__(self) -> None:
        if not self.prompt_lens:
            self.prompt_lens = (self.prompt_len,)
        if not self.temperatures:
            self.temperatures = (self.temperature,)

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_episodes(self) -> int:
        return len(self.prompt_lens)

    @property
    def generated_positions(self) -> torch.Tensor:
        """Packed positions of the generated tokens, in packed order (the order every output follows)."""
        return self.loss_mask.nonzero().flatten()

    @property
    def num_generated(self) -> int:
        return int(self.loss_mask.sum())

    def generated_temperatures(self) -> torch.Tensor:
        """Sampling temperature of each generated token (episodes of a batch may differ)."""
        episode = self.episode_index[self.loss_mask.bool()]
        return torch.tensor(self.temperatures, dtype=torch.float32, device=episode.device)[episode]

    def generated_per_episode(self) -> list[int]:
        """How many generated tokens each episode contributes (to split batched outputs)."""
        episode = self.episode_index[self.loss_mask.bool()]
        return torch.bincount(episode, minlength=self.num_episodes).tolist()

    def to(self, device: torch.device | str) -> PackedSample:
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = value.to(device) if isinstance(value, torch.Tensor) else value
        return PackedSample(**values)


def end_on_trained_token(sample: PackedSample) -> PackedSample:
    """``sample`` without the untrained tokens that end it: a context copy whose turn a cut (:func:`truncate`) left out.

    verl puts an episode's score on its last response token and GAE skips untrained positions, so a score placed on a
    context-copy token would vanish from the advantages. The dropped tokens are context for nothing kept: every kept
    token stays exact. A sample with no trained token keeps its prompt only.
    """
    trained = sample.loss_mask.nonzero()
    end = int(trained[-1]) + 1 if trained.numel() else sample.prompt_len
    return truncate(sample, max(end, sample.prompt_len))


def predictor_positions(segment_ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The predictor rule: the position whose logits predict the token at each position of one episode's row.

    Inside a segment that is the previous position; a segment's first token is predicted by the prompt's last
    position (the context it was sampled in ends there); prompt positions get ``IGNORE_INDEX``.

    Args:
        segment_ids: ``(L,)`` one episode's segment ids, the prompt (id 0) first.
        prompt_len: ``P``, the prompt's length.

    Returns:
        ``(L,)`` long tensor of predictor positions.
    """
    length = segment_ids.numel()
    pred = torch.arange(-1, length - 1, dtype=torch.long, device=segment_ids.device)
    if length > prompt_len:
        body = segment_ids[prompt_len:]
        starts = torch.ones_like(body, dtype=torch.bool)
        starts[1:] = body[1:] != body[:-1]
        pred[prompt_len:] = torch.where(starts, torch.full_like(body, prompt_len - 1), pred[prompt_len:])
    pred[:prompt_len] = IGNORE_INDEX
    return pred


def renumber_segments(
    segment_ids: torch.Tensor, prompt_segment_ids: torch.Tensor, first_id: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Give one episode's segments (its prompt included) fresh, consecutive ids from ``first_id``, keeping their
    order, so episodes concatenated into one row never share an id (the mask rule keeps them apart).

    Returns:
        ``(segment_ids, prompt_segment_ids, next_id)``: both ``(L,)`` renumbered, and the first unused id.
    """
    uniq = torch.unique(torch.cat([segment_ids, prompt_segment_ids]))
    lut = torch.full((int(uniq.max()) + 1,), -1, dtype=torch.long, device=segment_ids.device)
    lut[uniq] = torch.arange(first_id, first_id + uniq.numel(), dtype=torch.long, device=segment_ids.device)
    return lut[segment_ids], lut[prompt_segment_ids], first_id + uniq.numel()


def _check_record(record: EpisodeRecord) -> None:
    prompt = list(record.prompt_ids)
    if not prompt:
        raise ValueError(f"episode {record.id!r}: empty prompt_ids; the first generated token would have no predictor")
    for turn in record.turns:
        if list(turn.context_ids[: len(prompt)]) != prompt:
            raise ValueError(
                f"episode {record.id!r}, turn {turn.index}: context_ids does not start with prompt_ids; "
                "the packed layout needs every context to share the prompt as a prefix "
                "(was a context re-tokenized or the prompt rewritten?)"
            )
        if len(turn.generated_ids) != len(turn.logprobs):
            raise ValueError(
                f"episode {record.id!r}, turn {turn.index}: {len(turn.generated_ids)} generated ids but "
                f"{len(turn.logprobs)} log-probs"
            )


def pack_episode(record: EpisodeRecord) -> PackedSample:
    """Pack ``[prompt | seg_1 | ... | seg_T]``; turns that generated nothing are left out (nothing to score).

    Raises ``ValueError`` when a context does not start with the prompt, or ids and log-probs disagree in length.
    """
    _check_record(record)
    prompt = [int(i) for i in record.prompt_ids]
    p = len(prompt)
    ids, pos, seg = list(prompt), list(range(p)), [0] * p
    loss, lps, turn_idx = [0] * p, [0.0] * p, [IGNORE_INDEX] * p
    for t, turn in enumerate(record.turns, start=1):
        generated = [int(i) for i in turn.generated_ids]
        if not generated:
            continue
        copy = [int(i) for i in turn.context_ids[p:]]
        n = len(copy) + len(generated)
        ids += copy + generated
        pos += range(p, p + n)
        seg += [t] * n
        loss += [0] * len(copy) + [1] * len(generated)
        lps += [0.0] * len(copy) + [float(x) for x in turn.logprobs]
        turn_idx += [int(turn.index)] * n
    length = len(ids)
    segment_ids = torch.tensor(seg, dtype=torch.long)
    loss_mask = torch.tensor(loss, dtype=torch.long)
    return PackedSample(
        input_ids=torch.tensor(ids, dtype=torch.long),
        position_ids=torch.tensor(pos, dtype=torch.long),
        segment_ids=segment_ids,
        loss_mask=loss_mask,
        rollout_logprobs=torch.tensor(lps, dtype=torch.float32),
        predictor_index=torch.where(loss_mask.bool(), predictor_positions(segment_ids, p), IGNORE_INDEX),
        turn_index=torch.tensor(turn_idx, dtype=torch.long),
        prompt_segment_ids=torch.zeros(length, dtype=torch.long),
        episode_index=torch.zeros(length, dtype=torch.long),
        prompt_len=p,
        temperature=record_temperature(record),
    )


def per_turn_samples(record: EpisodeRecord) -> list[PackedSample]:
    """The per-turn layout: one plain causal sequence ``context_t ⊕ generated_t`` per turn (as verl's
    multi-output agent loops and MemAgent train). Each is a ``PackedSample`` with a single segment
    (``segment_ids`` all 0), so every backend treats it as ordinary causal attention. Empty turns are left out.
    """
    _check_record(record)
    temperature = record_temperature(record)
    samples = []
    for turn in record.turns:
        generated = [int(i) for i in turn.generated_ids]
        if not generated:
            continue
        context = [int(i) for i in turn.context_ids]
        c, n = len(context), len(context) + len(generated)
        loss = [0] * c + [1] * len(generated)
        samples.append(
            PackedSample(
                input_ids=torch.tensor(context + generated, dtype=torch.long),
                position_ids=torch.arange(n),
                segment_ids=torch.zeros(n, dtype=torch.long),
                loss_mask=torch.tensor(loss, dtype=torch.long),
                rollout_logprobs=torch.tensor([0.0] * c + [float(x) for x in turn.logprobs], dtype=torch.float32),
                predictor_index=torch.tensor([IGNORE_INDEX] * c + list(range(c - 1, n - 1)), dtype=torch.long),
                turn_index=torch.full((n,), int(turn.index), dtype=torch.long),
                prompt_segment_ids=torch.zeros(n, dtype=torch.long),
                episode_index=torch.zeros(n, dtype=torch.long),
                prompt_len=c,
                temperature=temperature,
            )
        )
    return samples


def packed_token_count(record: EpisodeRecord) -> int:
    """Tokens the packed forward processes: ``P + Σ_t (|context_t| − P + |generated_t|)`` (non-empty turns)."""
    p = len(record.prompt_ids)
    return p + sum(len(t.context_ids) - p + len(t.generated_ids) for t in record.turns if t.generated_ids)


def per_turn_token_count(record: EpisodeRecord) -> int:
    """Tokens the per-turn forwards process: ``Σ_t (|context_t| + |generated_t|)`` (non-empty turns)."""
    return sum(len(t.context_ids) + len(t.generated_ids) for t in record.turns if t.generated_ids)


def pack_batch(items: Sequence[EpisodeRecord | PackedSample]) -> PackedSample:
    """Concatenate several episodes into one packed row (no padding).

    Segment ids are made globally unique (each episode's prompt gets its own id too) and
    ``prompt_segment_ids`` says which prompt each token may read, so the mask rule
    ``j ≤ i and segment[j] ∈ {segment[i], prompt_segment[i]}`` keeps episodes apart. Positions restart per
    episode; ``predictor_index`` is shifted to the concatenated row. Outputs come back in packed order,
    episode after episode: split them with ``generated_per_episode()``.
    """
    if not items:
        raise ValueError("pack_batch needs at least one episode")
    samples = [item if isinstance(item, PackedSample) else pack_episode(item) for item in items]
    parts: dict[str, list[torch.Tensor]] = {
        k: []
        for k in (
            "input_ids",
            "position_ids",
            "segment_ids",
            "loss_mask",
            "rollout_logprobs",
            "predictor_index",
            "turn_index",
            "prompt_segment_ids",
            "episode_index",
        )
    }
    offset, next_segment, episode = 0, 0, 0
    prompt_lens: list[int] = []
    temperatures: list[float] = []
    for s in samples:
        for e in range(s.num_episodes):
            sel = s.episode_index == e
            seg = s.segment_ids[sel]
            pseg = s.prompt_segment_ids[sel]
            seg, pseg, next_segment = renumber_segments(seg, pseg, next_segment)
            base = int(sel.nonzero()[0]) if sel.any() else 0
            pred = s.predictor_index[sel]
            parts["input_ids"].append(s.input_ids[sel])
            parts["position_ids"].append(s.position_ids[sel])
            parts["segment_ids"].append(seg)
            parts["prompt_segment_ids"].append(pseg)
            parts["loss_mask"].append(s.loss_mask[sel])
            parts["rollout_logprobs"].append(s.rollout_logprobs[sel])
            parts["predictor_index"].append(torch.where(pred >= 0, pred - base + offset, pred))
            parts["turn_index"].append(s.turn_index[sel])
            parts["episode_index"].append(torch.full_like(seg, episode))
            prompt_lens.append(s.prompt_lens[e])
            temperatures.append(s.temperatures[e])
            offset += int(sel.sum())
            episode += 1
    cat = {k: torch.cat(v) for k, v in parts.items()}
    return PackedSample(
        **cat,
        prompt_len=prompt_lens[0],
        temperature=temperatures[0],
        prompt_lens=tuple(prompt_lens),
        temperatures=tuple(temperatures),
    )


def truncate(sample: PackedSample, length: int) -> PackedSample:
    """The first ``length`` tokens of a single-episode packed sample, every remaining token still exact.

    Cutting keeps exactness because attention is causal within a segment and later segments never feed earlier
    ones: no kept token's context changes. The cut must keep the whole prompt.
    """
    if sample.num_episodes != 1:
        raise ValueError("truncate takes a single-episode sample (before pack_batch)")
    if length < sample.prompt_len:
        raise ValueError(f"cannot cut a packed sample to {length} tokens: its prompt has {sample.prompt_len}")
    if length >= sample.length:
        return sample
    values: dict[str, Any] = {}
    for f in fields(sample):
        value = getattr(sample, f.name)
        values[f.name] = value[:length] if isinstance(value, torch.Tensor) else value
    return PackedSample(**values)
