"""``make gpu-check``: what a single GPU machine must show before a cluster run, in one script, under 10 minutes.

Made for a machine with torch + CUDA, transformers and triton but no vLLM, flash-attn, Ray or internet. Steps (each
recorded in the JSON with its status, time and numbers; one failing step does not stop the others):

1. ``environment``: torch / CUDA / device / transformers versions, flash-attn and ``torch.nn.attention.varlen``.
2. ``gpu_tests``: the project's CUDA tests (``pytest -m gpu`` on the files that hold them and whose modules are here).
3. ``parity_fp32``: MEM1's packed forward (flex, segmented) against per-turn recomputation, fp32, max |Δ log-prob|
   ≤ 1e-4 (the invariant of docs/design.md).
4. ``real_shapes_bf16``: a random model with Qwen2.5-7B's layer shapes (hidden 3584, 28 heads / 4 KV heads, MLP
   18944; two layers) in bf16: packed forward+backward (flash when available, else flex) against per-turn, gradient
   finite, peak memory.
5. ``flash_varlen``: the ``flash`` packed attention (flash-attn, else PyTorch's ``varlen_attn``) against the
   segmented SDPA reference, bf16.
6. ``engine_path``: the packed forward+backward as verl's FSDP engine runs it (FSDP2 ``fully_shard``, bf16 mixed
   precision with fp32 reduction, gradient checkpointing, one rank) against the same weights unsharded.
7. ``packing``: packed vs per-turn forward+backward time at 2 / 4 / 8 objectives on the GPU (bf16), as a ratio.

``--dry`` (CI, CPU): steps 1, 3 and 6 run on CPU with a small model (6 in fp32 over gloo), 2 lists the GPU tests, the
others report
``skipped``. The JSON goes to ``--out`` (default ``outputs/gpu_check.json``).

    .venv/bin/python benchmarks/gpu_check.py                 # on the GPU machine (make gpu-check)
    .venv/bin/python benchmarks/gpu_check.py --dry           # anywhere
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

QWEN25_7B_LAYER = {"hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944}
SMALL_LAYER = {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512}


def random_model(layer: dict, *, layers: int, dtype, device: str, seed: int = 0):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=32000,
        num_hidden_layers=layers,
        max_position_embeddings=65536,
        rope_theta=1_000_000.0,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        **layer,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).to(device=device, dtype=dtype).eval()


def episode(objectives: int, *, seed: int = 0, generated: int = 120, obs: int = 200):
    from packing import synthetic_record

    return synthetic_record(objectives, seed=seed, instructions=200, per_question=30, generated=generated, obs=obs)


# the oldest Linux driver each CUDA major release runs on (NVIDIA's minor-version compatibility): torch 2.11 from PyPI
# is a CUDA 13.0 build, which many H100 nodes (drivers 535-570) cannot run
MIN_DRIVER = {11: 450, 12: 525, 13: 580}


def driver_version() -> str | None:
    """The NVIDIA driver's version from ``nvidia-smi`` (None without one)."""
    import shutil

    if shutil.which("nvidia-smi") is None:
        return None
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
    )
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else None


def driver_problem(cuda_build: str | None, driver: str | None) -> str | None:
    """Why torch's CUDA build cannot run on this driver, or None (no CUDA build, no driver, or compatible)."""
    if not cuda_build or not driver:
        return None
    major = int(cuda_build.split(".")[0])
    needed = MIN_DRIVER.get(major)
    if needed is not None and int(driver.split(".")[0]) < needed:
        return (
            f"torch {cuda_build} (a CUDA {major} build) needs NVIDIA driver >= {needed}, this machine has {driver}: "
            f"install a torch built for the driver's CUDA (e.g. pip install torch --index-url "
            f"https://download.pytorch.org/whl/cu126) or use verl's image"
        )
    return None


def step_environment(args) -> dict:
    import importlib.util

    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "driver": driver_version(),
        "driver_problem": driver_problem(torch.version.cuda, driver_version()),
        "cuda_available": cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
        "torch_varlen_attn": importlib.util.find_spec("torch.nn.attention.varlen") is not None,
    }


# every test file with CUDA tests (`pytest.mark.gpu`; tests/training/test_gpu_check_on_cpu.py keeps this list
# complete) -> the modules it needs beyond torch and transformers. Collecting `tests` as a whole would import every
# test module, and this machine need not have verl, Ray, faiss or the retrieval stack.
GPU_TEST_FILES = {
    "tests/training/test_gpu_attention.py": (),
    "tests/env_servers/retrieval/test_faiss_gpus.py": ("faiss", "bm25s", "httpx", "fastapi"),
}


def step_gpu_tests(args) -> dict:
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped", "reason": "pytest is not installed"}
    files = [f for f, needs in GPU_TEST_FILES.items() if all(importlib.util.find_spec(m) for m in needs)]
    left_out = sorted(set(GPU_TEST_FILES) - set(files))
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", *files, "-p", "no:cacheprovider"]
    if args.dry:
        command.append("--collect-only")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=args.tests_timeout)
    tail = result.stdout.strip().splitlines()[-1:] or [""]
    if result.returncode not in (0, 5) or (not args.dry and "failed" in tail[0]):
        raise RuntimeError(f"pytest -m gpu: {tail[0]}\n{result.stdout[-3000:]}")
    return {"summary": tail[0], "collected_only": args.dry, "files": files, "left_out": left_out}


def _auto_backend(device: str) -> str:
    """``training.attention.attention_backend("auto", device)``, which this machine cannot call (it reads
    verl_mem1.config, which needs verl);
    tests/training/test_gpu_check_on_cpu.py holds the two to the same answers."""
    from verl_mem1.training.attention import flash_varlen_implementation

    return "flash" if device == "cuda" and flash_varlen_implementation() else "segmented"


def _parity(model, records, backends) -> dict:
    import torch

    from verl_mem1.training import pack_episode, packed_logprobs
    from verl_mem1.training.forward import per_turn_logprobs

    diffs = {b: 0.0 for b in backends}
    with torch.no_grad():
        for record in records:
            truth = per_turn_logprobs(model, record).float()
            sample = pack_episode(record)
            for backend in backends:
                got = packed_logprobs(model, sample, backend=backend).float()
                diffs[backend] = max(diffs[backend], (got - truth).abs().max().item())
    return diffs


def step_parity_fp32(args) -> dict:
    import torch

    device = "cpu" if args.dry else "cuda"
    layers = 2
    model = random_model(
        SMALL_LAYER if args.dry else QWEN25_7B_LAYER, layers=layers, dtype=torch.float32, device=device
    )
    backends = ("segmented",) if args.dry else ("flex", "segmented")
    diffs = _parity(model, [episode(2, seed=1), episode(4, seed=2)], backends)
    if max(diffs.values()) > 1e-4:
        raise AssertionError(f"packed vs per-turn log-probs differ by {diffs} (> 1e-4, fp32)")
    return {"device": device, "max_abs_diff": diffs}


def step_real_shapes_bf16(args) -> dict:
    import torch

    from verl_mem1.training import pack_episode, packed_logprobs
    from verl_mem1.training.forward import per_turn_logprobs

    model = random_model(QWEN25_7B_LAYER, layers=2, dtype=torch.bfloat16, device="cuda")
    record = episode(4, seed=3)
    backend = _auto_backend("cuda")
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    sample = pack_episode(record)
    logprobs = packed_logprobs(model, sample, backend=backend)
    logprobs.float().sum().backward()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    grad_norm = torch.sqrt(sum(p.grad.float().pow(2).sum() for p in model.parameters() if p.grad is not None)).item()
    with torch.no_grad():
        truth = per_turn_logprobs(model, record).float()
    diff = (logprobs.detach().float() - truth).abs()
    if not torch.isfinite(torch.tensor(grad_norm)) or grad_norm == 0:
        raise AssertionError(f"gradient norm {grad_norm}")
    if diff.mean().item() > 0.05:
        raise AssertionError(f"bf16 packed vs per-turn mean |Δ log-prob| {diff.mean().item():.4f} > 0.05")
    return {
        "backend": backend,
        "packed_tokens": int(sample.length),
        "fwd_bwd_s": seconds,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
        "grad_norm": grad_norm,
        "mean_abs_diff": diff.mean().item(),
        "max_abs_diff": diff.max().item(),
    }


def step_flash_varlen(args) -> dict:
    import torch

    from verl_mem1.training import attention, pack_episode

    sample = pack_episode(episode(4, seed=4))
    layout = attention.segment_layout(sample.segment_ids.cuda(), sample.prompt_segment_ids.cuda())
    g = torch.Generator(device="cuda").manual_seed(0)
    length, heads, kv_heads, dim = sample.length, 28, 4, 128
    q = torch.randn(1, heads, length, dim, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, kv_heads, length, dim, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, kv_heads, length, dim, device="cuda", dtype=torch.bfloat16, generator=g)
    got = attention.flash_varlen(q, k, v, layout, None, 0.0).float()
    reference = attention.segmented_sdpa(q, k, v, layout, None, 0.0).transpose(1, 2).float()  # [1, L, H, D]
    diff = (got - reference).abs().max().item()
    if diff > 2e-2:
        raise AssertionError(f"flash varlen vs segmented SDPA: max |Δ| {diff} > 2e-2 (bf16)")
    return {"implementation": attention.flash_varlen_implementation(), "tokens": int(length), "max_abs_diff": diff}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step_engine_path(args) -> dict:
    """The MEM1 packed forward and backward the way verl's FSDP engine runs the policy: gradient checkpointing on,
    FSDP2 ``fully_shard`` per decoder layer and at the root with ``MixedPrecisionPolicy`` (bf16 compute, fp32
    reduction; fp32 in ``--dry``, as verl's CPU platform sets it), one rank, the whole model called (logits through
    ``logits_to_keep``). Log-probs and gradients against the same weights unsharded, without checkpointing."""
    import copy

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from verl_mem1.training import pack_episode, packed_logprobs

    device, dtype = ("cpu", torch.float32) if args.dry else ("cuda", torch.bfloat16)
    model = random_model(SMALL_LAYER if args.dry else QWEN25_7B_LAYER, layers=2, dtype=torch.float32, device=device)
    reference = copy.deepcopy(model).to(dtype).train()
    sample = pack_episode(episode(4, seed=5))
    backend = _auto_backend(device)
    dist.init_process_group(
        "gloo" if args.dry else "nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        mesh = init_device_mesh(device, (1,))
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        model.train()
        from torch.distributed.tensor import DTensor

        if not (model.is_gradient_checkpointing and all(isinstance(p, DTensor) for p in model.parameters())):
            raise AssertionError("the model is not sharded with gradient checkpointing on")
        got = packed_logprobs(model, sample, backend=backend, logits_chunk=None)
        got.float().sum().backward()
        grads = {n: p.grad.full_tensor().float() for n, p in model.named_parameters() if p.grad is not None}
    finally:
        dist.destroy_process_group()
    want = packed_logprobs(reference, sample, backend=backend, logits_chunk=None)
    want.float().sum().backward()
    lp_diff = (got.detach().float() - want.detach().float()).abs().max().item()
    grad_diff = max(
        ((grads[n] - p.grad.float()).norm() / p.grad.float().norm().clamp_min(1e-12)).item()
        for n, p in reference.named_parameters()
        if p.grad is not None
    )
    lp_tol, grad_tol = (1e-4, 1e-4) if args.dry else (5e-2, 5e-2)
    if len(grads) != sum(p.grad is not None for p in reference.parameters()):
        raise AssertionError(f"{len(grads)} sharded parameters got a gradient, the reference has a different count")
    if lp_diff > lp_tol or grad_diff > grad_tol:
        raise AssertionError(
            f"FSDP2 + checkpointing vs plain: max |Δ log-prob| {lp_diff}, worst relative Δ grad {grad_diff}"
        )
    return {"device": device, "dtype": str(dtype), "backend": backend, "packed_tokens": int(sample.length),
            "max_abs_diff": lp_diff, "max_rel_grad_diff": grad_diff}  # fmt: skip


def step_packing(args) -> dict:
    import torch

    from verl_mem1.training import pack_episode, packed_logprobs, per_turn_samples

    model = random_model(QWEN25_7B_LAYER, layers=2, dtype=torch.bfloat16, device="cuda").train()
    backend = _auto_backend("cuda")
    rows = []
    for objectives in (2, 4, 8):
        record = episode(objectives, seed=10 + objectives, generated=215, obs=400)
        sample = pack_episode(record)

        def packed(sample=sample):
            model.zero_grad(set_to_none=True)
            packed_logprobs(model, sample, backend=backend).float().sum().backward()

        def per_turn(record=record):
            model.zero_grad(set_to_none=True)
            for s in per_turn_samples(record):  # as benchmarks/packing.py: logits at the predictors only
                generated = s.loss_mask.bool()
                predictors = s.predictor_index[generated].cuda()
                logits = model(input_ids=s.input_ids[None].cuda(), use_cache=False, logits_to_keep=predictors).logits
                targets = s.input_ids[generated].cuda()
                torch.log_softmax(logits[0].float(), -1).gather(-1, targets[:, None]).sum().backward()

        timings = {}
        for name, fn in (("packed", packed), ("per_turn", per_turn)):
            fn()  # warm-up (kernels, compile)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            timings[name] = time.perf_counter() - t0
        rows.append(
            {
                "objectives": objectives,
                "packed_tokens": int(sample.length),
                "packed_s": timings["packed"],
                "per_turn_s": timings["per_turn"],
                "speedup": timings["per_turn"] / timings["packed"],
            }
        )
    return {"backend": backend, "rows": rows}


STEPS: list[tuple[str, Callable[[argparse.Namespace], dict], bool]] = [
    # (name, function, runs in --dry)
    ("environment", step_environment, True),
    ("gpu_tests", step_gpu_tests, True),
    ("parity_fp32", step_parity_fp32, True),
    ("real_shapes_bf16", step_real_shapes_bf16, False),
    ("flash_varlen", step_flash_varlen, False),
    ("engine_path", step_engine_path, True),
    ("packing", step_packing, False),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="CPU only: run what needs no CUDA, skip the rest")
    parser.add_argument("--out", default=str(REPO / "outputs" / "gpu_check.json"), help="the JSON report")
    parser.add_argument("--only", nargs="*", help="run only these steps")
    parser.add_argument("--tests-timeout", type=int, default=300, help="seconds for the pytest step")
    args = parser.parse_args(argv)
    if not args.dry:
        import torch

        problem = driver_problem(torch.version.cuda, driver_version())  # first: it explains the rest
        if problem:
            parser.error(problem)
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --dry, or on the GPU machine")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    report = {"dry": args.dry, "steps": {}}
    failed = 0
    for name, fn, in_dry in STEPS:
        if args.only and name not in args.only:
            continue
        if args.dry and not in_dry:
            report["steps"][name] = {"status": "skipped", "reason": "needs CUDA (--dry)"}
            continue
        t0 = time.perf_counter()
        try:
            result = {"status": "passed", **fn(args)}
        except Exception as exc:  # noqa: BLE001 - every step reports; the exit code says whether any failed
            failed += 1
            result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - t0, 2)
        report["steps"][name] = result
        print(f"{name:18s} {result['status']:8s} {result['seconds']:7.1f}s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"report: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
