"""Parity: do training-time log-probs reproduce the rollout's, token for token, on every backend? (``mem1 parity``)

This is the project's acceptance check for MEM1 training (see docs/design.md, "exact log-probs"): for each
attention backend, the max |Δ| between the log-prob the training forward assigns to every generated token
and the one recorded at rollout. The module imports nothing heavy; torch loads inside the functions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from verl_mem1.records import EpisodeRecord

DEFAULT_TOLERANCE = 1e-4
ALL_BACKENDS = ("dense", "flex", "segmented", "flash", "segment_groups", "per_turn")


def default_backends(model: torch.nn.Module | None = None) -> list[str]:
    """dense, flex, segment_groups (plain-head models) and per_turn; flash too when flash-attn can run the model
    (CUDA, fp16/bf16 weights)."""
    import torch

    from verl_mem1.training.head import plain_head

    backends = ["dense", "flex", "per_turn"]
    if model is not None and plain_head(model) is not None:
        backends.insert(2, "segment_groups")
    if model is not None:
        param = next(model.parameters())
        if param.device.type == "cuda" and param.dtype in (torch.float16, torch.bfloat16):
            try:
                import flash_attn  # noqa: F401

                backends.insert(2, "flash")
            except ImportError:
                pass
    return backends


def parity_report(
    model: torch.nn.Module,
    records: Sequence[EpisodeRecord],
    backends: Sequence[str] | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    compile_flex: bool = True,
) -> dict[str, Any]:
    """Compare training-time log-probs with the recorded ones over all generated tokens of ``records``.

    Returns ``{"episodes", "turns", "generated_tokens", "packed_tokens", "per_turn_tokens", "token_ratio",
    "tolerance", "ok", "backends": {name: {"max_abs_delta", "mean_abs_delta", "tokens", "forward_tokens",
    "seconds", "ok"}}}``. Runs without gradients, in eval mode (restored afterwards).
    """
    import torch

    from verl_mem1.training.forward import episode_logprobs
    from verl_mem1.training.layout import pack_episode, packed_token_count, per_turn_token_count

    backends = list(backends or default_backends(model))
    for b in backends:
        if b not in ALL_BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {ALL_BACKENDS}")
    records = [r for r in records if any(t.generated_ids for t in r.turns)]
    rollout = [pack_episode(r) for r in records]  # also validates every record (prompt prefix, lengths)
    recorded = [s.rollout_logprobs[s.loss_mask.bool()].double() for s in rollout]
    packed_tokens = sum(packed_token_count(r) for r in records)
    per_turn_tokens = sum(per_turn_token_count(r) for r in records)
    report: dict[str, Any] = {
        "episodes": len(records),
        "turns": sum(sum(1 for t in r.turns if t.generated_ids) for r in records),
        "generated_tokens": int(sum(x.numel() for x in recorded)),
        "packed_tokens": packed_tokens,
        "per_turn_tokens": per_turn_tokens,
        "token_ratio": per_turn_tokens / packed_tokens if packed_tokens else None,
        "tolerance": tolerance,
        "backends": {},
    }
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for backend in backends:
                start = time.perf_counter()
                deltas = []
                for record, expected in zip(records, recorded, strict=True):
                    got = episode_logprobs(model, record, backend=backend, compile_flex=compile_flex)
                    deltas.append((got.detach().double().cpu() - expected).abs())
                delta = torch.cat(deltas) if deltas else torch.zeros(0, dtype=torch.float64)
                max_delta = float(delta.max()) if delta.numel() else 0.0
                report["backends"][backend] = {
                    "max_abs_delta": max_delta,
                    "mean_abs_delta": float(delta.mean()) if delta.numel() else 0.0,
                    "tokens": int(delta.numel()),
                    "forward_tokens": per_turn_tokens if backend == "per_turn" else packed_tokens,
                    "seconds": round(time.perf_counter() - start, 4),
                    "ok": bool(max_delta <= tolerance),
                }
    finally:
        model.train(was_training)
    report["ok"] = all(b["ok"] for b in report["backends"].values())
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a short summary line and a Markdown table."""
    summary = f"{report['episodes']} episodes, {report['turns']} turns, {report['generated_tokens']} generated tokens"
    if report["token_ratio"]:
        summary += (
            f"; forward tokens: packed {report['packed_tokens']}, per-turn {report['per_turn_tokens']} "
            f"(per-turn / packed = {report['token_ratio']:.2f})"
        )
    lines = [
        summary,
        "",
        "| backend | max abs delta | mean abs delta | tokens | forward tokens | seconds "
        f"| ok (<= {report['tolerance']:g}) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, b in report["backends"].items():
        lines.append(
            f"| {name} | {b['max_abs_delta']:.3e} | {b['mean_abs_delta']:.3e} | {b['tokens']} | {b['forward_tokens']} "
            f"| {b['seconds']:.2f} | {'yes' if b['ok'] else 'NO'} |"
        )
    return "\n".join(lines)
