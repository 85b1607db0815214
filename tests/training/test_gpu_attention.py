"""GPU paths: flash-attn varlen, compiled flex with its backward, and bf16 tolerances (skipped without CUDA).

Tolerances, and why:

- fp32 on CUDA (dense, compiled flex, segmented vs. the rollout-equivalent per-turn forward): 1e-4, the same
  acceptance bound as on CPU (TF32 is switched off for these tests).
- bf16: the model's activations carry 8 mantissa bits (relative rounding ~4e-3 per op), so two correct kernels
  that sum in different orders differ by O(1e-2) in the log-probs. We accept max |Δ| ≤ 5e-2 and mean |Δ| ≤ 5e-3
  between backends in the *same* bf16 model (flash vs. dense vs. segmented), and attention outputs within
  2e-2 of each other. Comparisons across precisions (bf16 vs. fp32) are not a parity check and are not made.
"""

from __future__ import annotations

import pytest
import torch

from tests.training.records import mem1_record
from verl_mem1.training import pack_batch, pack_episode, packed_logprobs, per_turn_logprobs, segment_layout
from verl_mem1.training.attention import flash_varlen_available

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BF16_MAX, BF16_MEAN, BF16_ATTENTION = 5e-2, 5e-3, 2e-2


# flash-attn, else PyTorch's own varlen_attn (the machine `make gpu-check` targets has no flash-attn)
needs_flash = pytest.mark.skipif(not flash_varlen_available(), reason="needs flash-attn or torch varlen_attn")


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _model(tiny_model_dir, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=dtype).to("cuda").eval()


def _records():
    return [mem1_record(300, 6, 40, 120, seed=s, temperature=t) for s, t in ((11, 1.0), (12, 0.7))]


def test_fp32_cuda_backends_match_per_turn(tiny_model_dir):
    model = _model(tiny_model_dir, torch.float32)
    with torch.no_grad():
        for record in _records():
            truth = per_turn_logprobs(model, record)
            sample = pack_episode(record)
            for backend in ("dense", "flex", "segmented"):
                got = packed_logprobs(model, sample, backend=backend)  # flex: compiled
                assert (got - truth).abs().max().item() <= 1e-4, backend


def test_compiled_flex_backward_on_cuda_matches_per_turn(tiny_model_dir):
    record = _records()[1]

    def grads(fn):
        model = _model(tiny_model_dir, torch.float32).train()
        fn(model).sum().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    flex = grads(lambda m: packed_logprobs(m, pack_episode(record), backend="flex"))
    per_turn = grads(lambda m: per_turn_logprobs(m, record))
    for name, g in per_turn.items():
        scale = g.abs().max().item() + 1e-6
        assert (flex[name] - g).abs().max().item() / scale < 1e-3, name


@needs_flash
def test_flash_varlen_attention_equals_segmented_sdpa():
    from verl_mem1.training.attention import flash_varlen, segmented_sdpa

    sample = pack_batch([pack_episode(r) for r in _records()])
    layout = segment_layout(sample.segment_ids, sample.prompt_segment_ids)
    g = torch.Generator(device="cuda").manual_seed(0)
    length, heads, kv_heads, dim = sample.length, 8, 2, 64
    q = torch.randn(1, heads, length, dim, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, kv_heads, length, dim, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, kv_heads, length, dim, device="cuda", dtype=torch.bfloat16, generator=g)
    flash = flash_varlen(q, k, v, layout, dim**-0.5, 0.0)  # [1, L, H, D]
    reference = segmented_sdpa(q.float(), k.float(), v.float(), layout, dim**-0.5, 0.0).transpose(1, 2)
    assert (flash.float() - reference).abs().max().item() <= BF16_ATTENTION


@needs_flash
def test_flash_logprobs_in_bf16(tiny_model_dir):
    model = _model(tiny_model_dir, torch.bfloat16)
    sample = pack_batch(_records())
    with torch.no_grad():
        flash = packed_logprobs(model, sample, backend="flash")
        for backend in ("dense", "segmented"):
            other = packed_logprobs(model, sample, backend=backend)
            delta = (flash - other).abs()
            assert delta.max().item() <= BF16_MAX and delta.mean().item() <= BF16_MEAN, backend


@needs_flash
def test_flash_gradients_flow_to_the_shared_prompt(tiny_model_dir):
    model = _model(tiny_model_dir, torch.bfloat16).train()
    sample = pack_episode(_records()[0])
    logprobs = packed_logprobs(model, sample, backend="flash")
    logprobs.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_segment_groups_on_cuda_match_the_packed_row(tiny_model_dir):
    """fp32 on CUDA: segment groups (prompt keys/values prepended per group) give the packed log-probs."""
    from verl_mem1.training.streaming import streamed_logprobs_and_entropy

    model = _model(tiny_model_dir, torch.float32)
    sample = pack_batch(_records())
    with torch.no_grad():
        packed = packed_logprobs(model, sample, backend="segmented")
        grouped, _ = streamed_logprobs_and_entropy(model, sample, group_tokens=300, with_entropy=False)
    assert (grouped - packed).abs().max().item() <= 1e-4


@needs_flash
def test_flash_segment_groups_in_bf16(tiny_model_dir):
    """The flash kernel with the prompt's keys/values prepended (queries only for the group) in bf16."""
    from verl_mem1.training.streaming import streamed_logprobs_and_entropy

    model = _model(tiny_model_dir, torch.bfloat16)
    sample = pack_batch(_records())
    with torch.no_grad():
        packed = packed_logprobs(model, sample, backend="flash")
        grouped, _ = streamed_logprobs_and_entropy(model, sample, group_tokens=300, backend="flash", with_entropy=False)
    delta = (grouped - packed).abs()
    assert delta.max().item() <= BF16_MAX and delta.mean().item() <= BF16_MEAN
