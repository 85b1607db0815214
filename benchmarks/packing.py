"""Packed MEM1 training forward vs. per-turn recomputation, and flex vs. dense attention memory (CPU, fp32).

Workload (paper-like, synthetic token ids): a multi-objective prompt of ~300 instruction tokens plus 40 per
question; 1.5 turns per objective; 215 generated and 400 observation tokens per turn; the MEM1 policy
(context_t = prompt + previous generated + previous observation). Model: a random Qwen2-architecture model
built from a config (hidden 1024, MLP 2816, 16 heads / 2 KV heads, 2 layers, 32k vocab), fp32.

Measured in one run, for each objective count:

- packed forward+backward: one packed row through ``packed_logprobs``. On CPU this is the ``segmented`` kernel,
  because torch has no flex-attention backward on CPU (``flex`` under autograd resolves to it);
- per-turn forward+backward: one plain causal sample per turn, backward after each (verl's multi-output loops);
- segment groups forward+backward (``mem1 parity``'s ``segment_groups``): the packed layout back-propagated in groups of
  whole segments of at most ``--group-tokens`` tokens sharing the prompt's keys/values (``streaming.py``);
- packed forward only (no grad): compiled flex, segmented, and the dense mask (the O(L²) reference).

Memory is the peak resident set size (VmHWM, reset through /proc/self/clear_refs before each phase) minus the
RSS at the start of the phase, with glibc's mmap threshold pinned (``MALLOC_MMAP_THRESHOLD_=65536``) so freed
tensors go back to the OS instead of hiding in malloc arenas. It counts everything the phase allocates (weights'
gradients and activations included), not only attention; the attention-only table isolates the attention call.
The pin makes every allocation over 64 KiB a fresh mmap, which slows the per-turn layout's many short-lived
tensors far more than the packed row (about 20% against 3% at 16 objectives), so times come from a run with
glibc's default allocator and memory from a second process with the pin. Linux only (uses /proc).

    .venv/bin/python benchmarks/packing.py            # full run, a few minutes on 2 cores
    .venv/bin/python benchmarks/packing.py --quick    # 2 and 4 objectives, smaller attention check
    .venv/bin/python benchmarks/packing.py --objectives 16 --layers 4 --intermediate 5632 --training-only
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

MMAP_THRESHOLD = "65536"


def _status_mb(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024


def measure(fn: Callable[[], object]) -> dict:
    """Wall seconds, process CPU seconds (all threads), peak RSS growth (MB) and the load average around ``fn()``.

    The machine this runs on may be shared: wall time then stretches with other jobs' load, CPU time much less,
    so ratios are taken on CPU time and both are reported.
    """
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start_rss = _status_mb("VmRSS")
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _status_mb("VmHWM") - start_rss
    gc.collect()
    return {"wall_s": wall, "cpu_s": cpu, "mb": peak, "load": (load0 + os.getloadavg()[0]) / 2}


def synthetic_record(objectives: int, *, seed: int, instructions: int, per_question: int, generated: int, obs: int):
    from verl_mem1.records import EpisodeRecord, TurnRecord

    rng = random.Random(seed)
    vocab = 32000
    prompt = [rng.randrange(vocab) for _ in range(instructions + per_question * objectives)]
    turns_n = objectives + objectives // 2  # 1-2 turns per objective
    turns, previous = [], []
    for t in range(turns_n):
        gen = [rng.randrange(vocab) for _ in range(generated)]
        observation = [rng.randrange(vocab) for _ in range(obs)] if t < turns_n - 1 else []
        turns.append(
            TurnRecord(
                index=t,
                context_ids=prompt + previous,
                generated_ids=gen,
                logprobs=[0.0] * generated,
                text="",
                internal_state=None,
                action={"kind": "query", "text": "", "reason": ""},
                observation_ids=observation,
                finish_reason="stop",
                timings={},
            )
        )
        previous = gen + observation
    return EpisodeRecord(
        id=f"synthetic-{objectives}",
        data_source="synthetic",
        questions=["q"] * objectives,
        ground_truth=[["a"]] * objectives,
        context_policy="mem1",
        tag_set="paper",
        sampling={"temperature": 1.0},
        prompt_ids=prompt,
        turns=turns,
    )


def training_flops(record, args, *, packed: bool, head_passes: int | None = None) -> float:
    """Forward+backward FLOPs of one episode, packed or per turn (matmuls only: linear layers, attention, LM head).

    ``head_passes``: the LM head's matmuls per generated token (default: 4 packed, 3 per turn; segment groups keep
    their logits, so 3).

    The token-count ratio ignores two costs packing cannot remove: the LM head and log-softmax run once per
    *generated* token in both layouts (and the packed path recomputes the head in backward: its logits are
    chunked and checkpointed), and a packed segment token attends to the whole prompt while a per-turn sample's
    extra tokens are cheap prompt tokens. This model counts both; its ratio is the achievable limit.
    """
    h, kv = args.hidden, 2 * (args.hidden // 16)  # 2 KV heads
    body = 2 * (h * (h + 2 * kv + h) + 3 * h * args.intermediate) * args.layers  # per token, forward
    attention = 4 * h * args.layers  # per (query, key) pair, forward
    head = 2 * h * 32000  # per generated token, forward
    p = len(record.prompt_ids)
    turns = [t for t in record.turns if t.generated_ids]
    generated = sum(len(t.generated_ids) for t in turns)
    if packed:
        tokens = p + sum(len(t.context_ids) - p + len(t.generated_ids) for t in turns)
        pairs = p * (p + 1) / 2
        for t in turns:
            n = len(t.context_ids) - p + len(t.generated_ids)
            pairs += n * p + n * (n + 1) / 2
        head_passes = head_passes or 4  # forward, recompute, two backward matmuls
    else:
        tokens = sum(len(t.context_ids) + len(t.generated_ids) for t in turns)
        pairs = sum((len(t.context_ids) + len(t.generated_ids)) ** 2 / 2 for t in turns)
        head_passes = 3
    return 3 * (tokens * body + pairs * attention) + head_passes * generated * head


def build_model(args):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=32000,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=16,
        num_key_value_heads=2,
        max_position_embeddings=65536,
        rope_theta=1_000_000.0,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(args.seed)
    return Qwen2ForCausalLM(config).float()


def bench_objectives(model, objectives: int, args) -> dict:
    import torch

    from verl_mem1.training import (
        pack_episode,
        packed_logprobs,
        packed_token_count,
        per_turn_samples,
        per_turn_token_count,
    )
    from verl_mem1.training.streaming import streamed_logprobs_and_entropy

    record = synthetic_record(
        objectives,
        seed=args.seed + objectives,
        instructions=300,
        per_question=40,
        generated=215,
        obs=400,
    )
    sample = pack_episode(record)
    row = {
        "objectives": objectives,
        "turns": len(record.turns),
        "prompt": len(record.prompt_ids),
        "packed_tokens": packed_token_count(record),
        "per_turn_tokens": per_turn_token_count(record),
    }
    row["token_ratio"] = row["per_turn_tokens"] / row["packed_tokens"]
    row["work_ratio"] = training_flops(record, args, packed=False) / training_flops(record, args, packed=True)
    row["grouped_work_ratio"] = training_flops(record, args, packed=False) / training_flops(
        record, args, packed=True, head_passes=3
    )

    def packed_train():
        model.zero_grad(set_to_none=True)
        packed_logprobs(model, sample, backend="segmented").sum().backward()

    def grouped_train():
        model.zero_grad(set_to_none=True)
        streamed_logprobs_and_entropy(
            model, sample, lambda lp, ent, index: lp.sum(), group_tokens=args.group_tokens, with_entropy=False
        )

    def per_turn_train():
        model.zero_grad(set_to_none=True)
        for s in per_turn_samples(record):
            predictors = s.predictor_index[s.loss_mask.bool()]
            logits = model(input_ids=s.input_ids[None], use_cache=False, logits_to_keep=predictors).logits[0]
            targets = s.input_ids[s.loss_mask.bool()]
            torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).sum().backward()

    def forward(backend):
        def run():
            with torch.no_grad():
                packed_logprobs(model, sample, backend=backend, compile_flex=True)

        return run

    model.train()
    row["packed"] = measure(packed_train)
    row["per_turn"] = measure(per_turn_train)
    row["grouped"] = measure(grouped_train)
    model.zero_grad(set_to_none=True)
    for name, prefix in (("packed", ""), ("grouped", "grouped_")):
        row[f"{prefix}speedup"] = row["per_turn"]["cpu_s"] / row[name]["cpu_s"]
        row[f"{prefix}speedup_wall"] = row["per_turn"]["wall_s"] / row[name]["wall_s"]
        row[f"{prefix}of_limit"] = row[f"{prefix}speedup"] / row["token_ratio"]
        row[f"{prefix}of_work_limit"] = row[f"{prefix}speedup"] / row[f"{prefix}work_ratio"]
    if args.training_only:
        return row
    model.eval()
    forward("flex")()  # warm-up: compiles flex attention for this shape
    row["flex_fwd"] = measure(forward("flex"))
    row["segmented_fwd"] = measure(forward("segmented"))
    if args.dense_max_tokens <= 0 or row["packed_tokens"] <= args.dense_max_tokens:
        row["dense_fwd"] = measure(forward("dense"))
    else:
        row["dense_fwd"] = None
    return row


def bench_attention(objectives: int, turns: int, args, *, eager: bool) -> dict:
    """One attention call at the model's shapes on a ~8k-token packed row: what each backend allocates."""
    import torch

    from verl_mem1.training import dense_mask, flex_block_mask, pack_episode, segment_layout
    from verl_mem1.training.attention import flex_kernel, segmented_sdpa

    record = synthetic_record(objectives, seed=args.seed, instructions=300, per_question=40, generated=215, obs=400)
    record.turns = record.turns[:turns]
    sample = pack_episode(record)
    length = sample.length
    heads, kv_heads, dim = 16, 2, args.hidden // 16
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, length, dim, generator=g)
    k = torch.randn(1, kv_heads, length, dim, generator=g)
    v = torch.randn(1, kv_heads, length, dim, generator=g)
    seg = sample.segment_ids
    scale = dim**-0.5

    def dense():
        mask = dense_mask(seg)
        rep = heads // kv_heads
        return torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=mask, scale=scale
        )

    def flex_compiled():
        return flex_kernel(q, k, v, flex_block_mask(seg), scale, True)

    def flex_eager():
        return flex_kernel(q, k, v, flex_block_mask(seg), scale, False)

    def segmented():
        return segmented_sdpa(q, k, v, segment_layout(seg), scale, 0.0)

    def with_grad(fn):
        def run():
            for t in (q, k, v):
                t.requires_grad_(True)
                t.grad = None
            fn().sum().backward()
            for t in (q, k, v):
                t.requires_grad_(False)
                t.grad = None

        return run

    reference = dense()
    flex_compiled()  # warm-up (compile)
    with torch.no_grad():
        checks = {
            "flex": (flex_compiled() - reference).abs().max().item(),
            "segmented": (segmented() - reference).abs().max().item(),
        }
    del reference
    out = {"tokens": length, "objectives": objectives, "turns": turns, "max_abs_diff_vs_dense": checks}
    with torch.no_grad():
        out["dense_fwd"] = measure(dense)
        out["flex_compiled_fwd"] = measure(flex_compiled)
        out["flex_eager_fwd"] = measure(flex_eager) if eager else None
        out["segmented_fwd"] = measure(segmented)
    out["dense_fwd_bwd"] = measure(with_grad(dense))
    out["segmented_fwd_bwd"] = measure(with_grad(segmented))
    out["mask_bytes"] = {
        "dense_bool_mask": length * length,
        "flex_block_mask": sum(
            t.numel() * t.element_size()
            for t in (lambda b: (b.kv_num_blocks, b.kv_indices, b.full_kv_num_blocks, b.full_kv_indices))(
                flex_block_mask(seg)
            )
        ),
    }
    return out


def bench_long_rows(lengths: list[int]) -> list[dict]:
    """No length cap: BlockMask and segment layout for very long packed rows (MEM1 shapes, many turns)."""
    from verl_mem1.training import flex_block_mask, pack_episode, segment_layout

    out = []
    for target in lengths:
        turns = max(2, (target - 940) // 830 + 1)  # each MEM1 segment: 615 copied + 215 generated tokens
        record = synthetic_record(16, seed=1, instructions=300, per_question=40, generated=215, obs=400)
        while len(record.turns) < turns:  # extend the episode with more MEM1 turns
            last = record.turns[-1]
            extra = synthetic_record(2, seed=len(record.turns), instructions=0, per_question=0, generated=215, obs=400)
            turn = extra.turns[0]
            turn.index = last.index + 1
            last.observation_ids = last.observation_ids or [1] * 400
            turn.context_ids = record.prompt_ids + last.generated_ids + last.observation_ids
            turn.observation_ids = [1] * 400
            record.turns.append(turn)
        sample = pack_episode(record)
        t0 = time.perf_counter()
        block_mask = flex_block_mask(sample.segment_ids)
        mask_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        segment_layout(sample.segment_ids)
        layout_s = time.perf_counter() - t0
        tensors = (block_mask.kv_num_blocks, block_mask.kv_indices, block_mask.full_kv_num_blocks)
        tensors += (block_mask.full_kv_indices,)
        out.append(
            {
                "tokens": sample.length,
                "turns": len(record.turns),
                "block_mask_s": mask_s,
                "block_mask_bytes": sum(t.numel() * t.element_size() for t in tensors),
                "layout_s": layout_s,
                "dense_mask_bytes": sample.length**2,
            }
        )
    return out


def memory_pass(argv: list[str]) -> dict:
    """Run the same phases in a child process with glibc's mmap threshold pinned; its memory figures."""
    import subprocess
    import tempfile

    argv = [a for i, a in enumerate(argv) if a != "--json" and (i == 0 or argv[i - 1] != "--json")]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "memory.json"
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
        subprocess.run([sys.executable, __file__, *argv, "--memory-pass", str(out)], env=env, check=True)
        return json.loads(out.read_text())


def merge_memory(rows: list[dict], attention: list[dict], memory: dict) -> None:
    """Replace each phase's ``mb`` (measured with the default allocator, unreliable) by the pinned child's."""
    for timed, pinned in zip([*rows, *attention], [*memory["rows"], *memory["attention"]], strict=True):
        for key, phase in timed.items():
            if isinstance(phase, dict) and "mb" in phase and pinned.get(key):
                phase["mb"] = pinned[key]["mb"]
                phase["mb_load"] = pinned[key]["load"]


def fmt(x, spec=".2f"):
    return "—" if x is None else format(x, spec)


def print_long_rows(long_rows: list[dict]) -> None:
    print("\nno length cap: mask structures for long packed rows (MEM1 shapes, 16-objective prompt)\n")
    print("| tokens | turns | BlockMask build s | BlockMask size | segment layout s | dense bool mask would be |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in long_rows:
        print(
            f"| {r['tokens']} | {r['turns']} | {r['block_mask_s']:.3f} | {r['block_mask_bytes'] / 2**20:.2f} MiB "
            f"| {r['layout_s']:.3f} | {r['dense_mask_bytes'] / 2**30:.1f} GiB |"
        )


def print_tables(rows: list[dict], attention: list[dict], meta: dict) -> None:
    print(f"\n{meta['machine']}; torch {meta['torch']}, transformers {meta['transformers']}; {meta['threads']} threads")
    print(f"model: {meta['model']}\n")
    print(
        "| objectives | turns | prompt | packed tokens | per-turn tokens | token ratio "
        "| packed fwd+bwd CPU s (wall) | per-turn fwd+bwd CPU s (wall) | speedup (CPU) | % of token ratio "
        "| FLOP ratio | % of FLOP ratio | packed MB | per-turn MB | load |"
    )
    print("|" + "---:|" * 15)
    for r in rows:
        p, t = r["packed"], r["per_turn"]
        print(
            f"| {r['objectives']} | {r['turns']} | {r['prompt']} | {r['packed_tokens']} | {r['per_turn_tokens']} "
            f"| {r['token_ratio']:.2f}x | {p['cpu_s']:.1f} ({p['wall_s']:.1f}) | {t['cpu_s']:.1f} ({t['wall_s']:.1f}) "
            f"| {r['speedup']:.2f}x | {100 * r['of_limit']:.0f}% | {r['work_ratio']:.2f}x "
            f"| {100 * r['of_work_limit']:.0f}% | {p['mb']:.0f} | {t['mb']:.0f} "
            f"| {p['load']:.1f} / {t['load']:.1f} |"
        )
    print(f"\nsegment groups (at most {meta['group_tokens']} tokens per group) against one packed row, same run:\n")
    print(
        "| objectives | token ratio | groups FLOP ratio | packed speedup | groups fwd+bwd CPU s (wall) "
        "| groups speedup | groups % of token ratio | groups % of FLOP ratio | packed MB | groups MB | per-turn MB |"
    )
    print("|" + "---:|" * 11)
    for r in rows:
        g = r["grouped"]
        print(
            f"| {r['objectives']} | {r['token_ratio']:.2f}x | {r['grouped_work_ratio']:.2f}x | {r['speedup']:.2f}x "
            f"| {g['cpu_s']:.1f} ({g['wall_s']:.1f}) | {r['grouped_speedup']:.2f}x "
            f"| {100 * r['grouped_of_limit']:.0f}% | {100 * r['grouped_of_work_limit']:.0f}% "
            f"| {r['packed']['mb']:.0f} | {g['mb']:.0f} "
            f"| {r['per_turn']['mb']:.0f} |"
        )
    if "flex_fwd" not in rows[0]:
        return
    print("\npacked forward only (no grad), whole model:\n")
    print("| objectives | packed tokens | flex compiled CPU s | segmented CPU s | dense CPU s | flex MB | dense MB |")
    print("|" + "---:|" * 7)
    for r in rows:
        d = r["dense_fwd"]
        print(
            f"| {r['objectives']} | {r['packed_tokens']} | {r['flex_fwd']['cpu_s']:.1f} "
            f"| {r['segmented_fwd']['cpu_s']:.1f} | {fmt(d and d['cpu_s'], '.1f')} | {r['flex_fwd']['mb']:.0f} "
            f"| {fmt(d and d['mb'], '.0f')} |"
        )
    for a in attention:
        print(
            f"\nattention only, one call at {a['tokens']} tokens ({a['objectives']} objectives, {a['turns']} turns), "
            f"16 heads / 2 KV heads x {meta['head_dim']}:"
        )
        print("\n| attention backend | CPU s | peak RSS growth MB | dense forward / this |")
        print("|---|---:|---:|---:|")
        dense_mb = a["dense_fwd"]["mb"]
        for name, key in (
            ("dense bool mask + SDPA, forward", "dense_fwd"),
            ("flex compiled, forward", "flex_compiled_fwd"),
            ("flex eager (torch's unfused reference), forward", "flex_eager_fwd"),
            ("segmented (SDPA per segment), forward", "segmented_fwd"),
            ("dense bool mask + SDPA, forward+backward", "dense_fwd_bwd"),
            ("segmented, forward+backward", "segmented_fwd_bwd"),
        ):
            if a[key] is None:
                continue
            m = a[key]
            print(f"| {name} | {m['cpu_s']:.2f} | {m['mb']:.0f} | {dense_mb / max(m['mb'], 1.0):.1f}x |")
        masks = a["mask_bytes"]
        print(
            f"\nmask sizes: dense {masks['dense_bool_mask'] / 2**20:.0f} MiB, flex BlockMask "
            f"{masks['flex_block_mask'] / 2**10:.0f} KiB; max |diff| vs dense: "
            f"flex {a['max_abs_diff_vs_dense']['flex']:.1e}, segmented {a['max_abs_diff_vs_dense']['segmented']:.1e}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objectives", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--quick", action="store_true", help="2 and 4 objectives; attention check at ~4k tokens only")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument(
        "--dense-max-tokens", type=int, default=12000, help="skip the dense forward above this length (0: never)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group-tokens", type=int, default=2048, help="segment-group size in tokens")
    parser.add_argument(
        "--training-only", action="store_true", help="only the fwd+bwd comparison (no forward-only/attention tables)"
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--memory-pass", default=None, help=argparse.SUPPRESS)  # internal: the pinned child's output
    args = parser.parse_args(argv)
    if args.memory_pass and os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        raise SystemExit("--memory-pass runs with MALLOC_MMAP_THRESHOLD_ pinned (the parent process sets it)")
    if not args.memory_pass and os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        raise SystemExit("unset MALLOC_MMAP_THRESHOLD_: times are measured with glibc's default allocator")
    if not Path("/proc/self/clear_refs").exists():
        print("needs Linux /proc (VmHWM, clear_refs) to measure memory", file=sys.stderr)
        return 2
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    objectives = [2, 4] if args.quick else args.objectives
    model = build_model(args)
    params = sum(p.numel() for p in model.parameters())
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "head_dim": args.hidden // 16,
        "group_tokens": args.group_tokens,
        "model": f"Qwen2 {args.layers} layers, hidden {args.hidden}, MLP {args.intermediate}, 16/2 heads, "
        f"vocab 32000, {params / 1e6:.0f}M params, fp32",
    }
    started = time.perf_counter()
    rows = []
    for n in objectives:
        rows.append(bench_objectives(model, n, args))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    attention, long_rows = [], []
    if not args.training_only:
        attention.append(bench_attention(4, 5, args, eager=True))  # ~4k tokens; eager flex materialises H x L x L
        if not args.quick:
            attention.append(bench_attention(8, 10, args, eager=False))  # ~8k tokens
        long_rows = bench_long_rows([32_768] if args.quick else [32_768, 131_072])
    meta["wall_s"] = time.perf_counter() - started
    if args.memory_pass:
        Path(args.memory_pass).write_text(json.dumps({"rows": rows, "attention": attention}))
        return 0
    merge_memory(rows, attention, memory_pass(argv if argv is not None else sys.argv[1:]))
    meta["wall_s"] = time.perf_counter() - started
    print_tables(rows, attention, meta)
    if long_rows:
        print_long_rows(long_rows)
    print(f"\ntotal {meta['wall_s']:.0f} s")
    if args.json:
        results = {"meta": meta, "rows": rows, "attention": attention, "long_rows": long_rows}
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
