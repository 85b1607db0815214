"""The MEM1 mask rule, its three encodings (dense, flex BlockMask, segment layout), and the float-mask bug."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_block_mask, create_mask

from tests.training.records import make_record, mem1_record
from verl_mem1.training import (
    check_bool_mask,
    dense_mask,
    enable_packed_attention,
    flex_block_mask,
    masked_forward,
    pack_batch,
    pack_episode,
    packed_model_call,
    per_turn_logprobs,
    segment_layout,
)
from verl_mem1.training.attention import FLOAT_MASK_ERROR
from verl_mem1.training.hf_attention import MEM1_ATTENTION, disable_packed_attention


def brute_force(segment_ids: list[int], prompt_segment_ids: list[int] | None = None) -> torch.Tensor:
    """The rule as stated, one (i, j) at a time."""
    n = len(segment_ids)
    pseg = prompt_segment_ids or [0] * n
    out = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            out[i, j] = j <= i and (segment_ids[j] == pseg[i] or segment_ids[j] == segment_ids[i])
    return out


CASES = [
    [0, 0, 0],  # prompt only: plain causal
    [0, 1, 1, 1],
    [0, 0, 1, 1, 2, 2, 2, 3],
    [0, 1, 2, 3, 4],  # one token per segment
    [0] * 5 + [1] * 3 + [2] * 4,
]


@pytest.mark.parametrize("segments", CASES)
def test_dense_mask_equals_the_rule(segments):
    mask = dense_mask(torch.tensor(segments))
    assert mask.shape == (1, 1, len(segments), len(segments)) and mask.dtype == torch.bool
    assert torch.equal(mask[0, 0], brute_force(segments))


def test_dense_mask_hand_case_spelled_out():
    # prompt of 2, segment 1 of 2, segment 2 of 2
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],  # segment 2 sees the prompt and itself, not segment 1
            [1, 1, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(dense_mask(torch.tensor([0, 0, 1, 1, 2, 2]))[0, 0], expected)


def test_batched_rule_keeps_episodes_apart():
    seg, pseg = [0, 0, 1, 1, 2, 2, 3, 4, 4], [0, 0, 0, 0, 2, 2, 2, 2, 2]
    mask = dense_mask(torch.tensor(seg), torch.tensor(pseg))[0, 0]
    assert torch.equal(mask, brute_force(seg, pseg))
    assert not mask[4:, :4].any(), "the second episode sees nothing of the first"


@st.composite
def segment_structures(draw):
    """Random packed rows: one to three episodes, each a prompt then segments, as pack_batch builds them."""
    seg, pseg, next_id = [], [], 0
    for _ in range(draw(st.integers(1, 3))):
        prompt_id = next_id
        next_id += 1
        n = draw(st.integers(1, 40))
        seg += [prompt_id] * n
        pseg += [prompt_id] * n
        for _ in range(draw(st.integers(0, 4))):
            n = draw(st.integers(1, 60))
            seg += [next_id] * n
            pseg += [prompt_id] * n
            next_id += 1
    return seg, pseg


@settings(max_examples=15, deadline=None)
@given(segment_structures(), st.sampled_from([16, 32]))
def test_flex_block_mask_matches_the_rule_and_torch_block_classification(structure, block_size):
    seg, pseg = structure
    seg_t, pseg_t = torch.tensor(seg), torch.tensor(pseg)
    n = len(seg)
    rule = brute_force(seg, pseg)
    assert torch.equal(dense_mask(seg_t, pseg_t)[0, 0], rule)
    block_mask = flex_block_mask(seg_t, pseg_t, block_size=block_size)
    # element level: the mask_mod evaluated everywhere equals the rule
    assert torch.equal(create_mask(block_mask.mask_mod, 1, 1, n, n, device="cpu")[0, 0], rule)
    # block level: same partial/full classification as torch's own (L x L) create_block_mask
    reference = create_block_mask(
        lambda b, h, q, kv: torch.from_numpy(rule.numpy())[q, kv], 1, 1, n, n, device="cpu", BLOCK_SIZE=block_size
    )
    assert torch.equal(block_mask.to_dense(), reference.to_dense())
    assert torch.equal(block_mask.full_kv_num_blocks, reference.full_kv_num_blocks)
    # segment layout: prefix ⊕ own keys reproduce the rule row by row
    layout = segment_layout(seg_t, pseg_t)
    rebuilt = torch.zeros(n, n, dtype=torch.bool)
    for a, b, pa, pb in layout.spans:
        for i in range(a, b):
            rebuilt[i, pa:pb] = True
            rebuilt[i, a : i + 1] = True
    assert torch.equal(rebuilt, rule)
    assert layout.cu_seqlens_q.tolist()[-1] == n and layout.kv_index.numel() == layout.cu_seqlens_k.tolist()[-1]


def test_segment_layout_hand_case():
    layout = segment_layout(torch.tensor([0, 0, 0, 1, 1, 2, 2, 2]))
    assert layout.spans == [(0, 3, 0, 0), (3, 5, 0, 3), (5, 8, 0, 3)]
    assert layout.cu_seqlens_q.tolist() == [0, 3, 5, 8]
    assert layout.cu_seqlens_k.tolist() == [0, 3, 8, 14]
    assert layout.kv_index.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 5, 6, 7]
    assert (layout.max_seqlen_q, layout.max_seqlen_k) == (3, 6)
    with pytest.raises(ValueError, match="not contiguous"):
        segment_layout(torch.tensor([0, 1, 2, 1]))


def test_block_mask_is_small_for_long_rows():
    record = mem1_record(prompt_len=500, turns=16, gen_len=200, obs_len=300)
    s = pack_episode(record)
    block_mask = flex_block_mask(s.segment_ids)
    tensors = [block_mask.kv_num_blocks, block_mask.kv_indices, block_mask.full_kv_num_blocks]
    assert s.length > 10_000
    assert sum(t.numel() for t in tensors) < s.length**2 / 1000  # block-level metadata only, nothing L x L


def test_segmented_kernel_equals_dense_sdpa_with_long_segments():
    """Segments longer than the kernel's row block (several SDPA calls per segment), GQA, and two episodes."""
    from verl_mem1.training.attention import SEGMENTED_ROW_BLOCK, segmented_sdpa

    seg = torch.tensor([0] * 70 + [1] * (2 * SEGMENTED_ROW_BLOCK + 37) + [2] * 5 + [3] * 40 + [4] * 300)
    pseg = torch.tensor([0] * (70 + 2 * SEGMENTED_ROW_BLOCK + 37 + 5) + [3] * 340)
    g = torch.Generator().manual_seed(0)
    n = seg.numel()
    q, k, v = (torch.randn(1, h, n, 16, generator=g, requires_grad=True) for h in (4, 2, 2))
    mask = dense_mask(seg, pseg)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask, scale=0.25
    )
    out = segmented_sdpa(q, k, v, segment_layout(seg, pseg), 0.25, 0.0)
    assert (out - ref).abs().max() < 1e-5
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(grads, ref_grads, strict=True))


def _logits(model, sample, backend, **kw):
    with torch.no_grad():
        out = packed_model_call(
            model,
            sample.input_ids,
            sample.position_ids,
            sample.segment_ids,
            sample.prompt_segment_ids,
            backend=backend,
            compile_flex=False,
            **kw,
        )
    return out.logits[0]


def test_flex_segmented_and_dense_agree_on_every_position(training_model):
    sample = pack_batch([mem1_record(40, 5, 9, 25, seed=1), mem1_record(30, 4, 7, 20, seed=2)])
    dense = _logits(training_model, sample, "dense")
    for backend in ("flex", "segmented"):
        other = _logits(training_model, sample, backend)
        assert (other - dense).abs().max().item() < 1e-4, backend


def test_float_mask_is_the_reference_bug_and_is_rejected(training_model, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    record = mem1_record(30, 4, 8, 15, seed=3)
    sample = pack_episode(record)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    truth = per_turn_logprobs(model, record).detach()
    gen = sample.loss_mask.bool()
    targets = sample.input_ids[gen]
    predictors = sample.predictor_index[gen]

    def score(mask):
        with torch.no_grad():
            logits = model(
                input_ids=sample.input_ids[None], position_ids=sample.position_ids[None], attention_mask=mask
            ).logits[0]
        return torch.log_softmax(logits[predictors], -1).gather(-1, targets[:, None])[:, 0]

    bool_mask = dense_mask(sample.segment_ids)
    assert (score(bool_mask) - truth).abs().max() < 1e-4, "the bool mask through plain HF sdpa is exact"
    # the reference implementation's bug: 1.0/0.0 in a float mask is ADDED to the scores -> nothing is masked
    buggy = (score(bool_mask.float()) - truth).abs().max().item()
    assert buggy > 0.05, f"a float 0/1 mask should corrupt the log-probs, max |delta| was {buggy}"
    # ... and our entry points refuse it, saying why
    with pytest.raises(TypeError, match="ADD a floating-point mask"):
        masked_forward(model, sample.input_ids, sample.position_ids, bool_mask.float())
    with pytest.raises(TypeError, match="1.0/0.0 mask masks nothing"):
        check_bool_mask(bool_mask.to(torch.bfloat16))
    enable_packed_attention(model)  # the registered attention function refuses it too, packed call or not
    for kwargs in ({"mem1_backend": "dense"}, {}):
        with pytest.raises(TypeError, match="ADD a floating-point mask"), torch.no_grad():
            model(
                input_ids=sample.input_ids[None],
                position_ids=sample.position_ids[None],
                attention_mask=bool_mask.float(),
                **kwargs,
            )
    out = masked_forward(model, sample.input_ids, sample.position_ids, bool_mask)
    assert out.logits.shape[1] == sample.length
    assert "float" in FLOAT_MASK_ERROR.format(dtype=torch.float32)


def test_ordinary_forwards_are_unchanged_after_enabling(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    ids = torch.randint(1000, 100000, (2, 12), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(ids)
    attention[0, :4] = 0  # left padding
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=attention).logits
        record = mem1_record(20, 2, 4, 6)
        sample = pack_episode(record)
        packed_model_call(model, sample.input_ids, sample.position_ids, sample.segment_ids, backend="segmented")
        assert model.config._attn_implementation == MEM1_ATTENTION
        after = model(input_ids=ids, attention_mask=attention).logits
        disable_packed_attention(model)
        assert model.config._attn_implementation == "sdpa"
    assert torch.equal(before[:, 4:], after[:, 4:]) and torch.equal(before[1], after[1])


def test_segmented_backend_does_not_build_a_packed_mask(training_model, monkeypatch):
    """Reset position ids would make transformers build an L x L packed-sequence mask; the layout path skips it."""
    import transformers.masking_utils as mu

    calls = []
    original = mu.sdpa_mask

    def spy(*args, **kwargs):
        calls.append(kwargs.get("q_length"))
        return original(*args, **kwargs)

    monkeypatch.setitem(mu.AttentionMaskInterface._global_mapping, "sdpa", spy)
    sample = pack_episode(make_record([1, 2, 3], [([1, 2, 3], [4, 5], [0.0, 0.0]), ([1, 2, 3, 4], [6], [0.0])]))
    _logits(training_model, sample, "segmented")
    assert calls == []
    with torch.no_grad():
        training_model(input_ids=sample.input_ids[None], position_ids=sample.position_ids[None])
    assert calls, "ordinary calls still create their masks through the base implementation"


@pytest.mark.e2e
@pytest.mark.skipif(
    os.environ.get("MEM1_SKIP_COMPILED_FLEX") == "1",
    reason="MEM1_SKIP_COMPILED_FLEX=1 (compiling flex attention on CPU takes ~15-35 s cold)",
)
def test_compiled_flex_on_cpu_matches_dense(training_model):
    sample = pack_batch([mem1_record(150, 5, 30, 60, seed=4), mem1_record(90, 4, 20, 40, seed=5)])
    dense = _logits(training_model, sample, "dense")
    with torch.no_grad():
        compiled = packed_model_call(
            training_model,
            sample.input_ids,
            sample.position_ids,
            sample.segment_ids,
            sample.prompt_segment_ids,
            backend="flex",
            compile_flex=True,
        ).logits[0]
    assert (compiled - dense).abs().max().item() < 1e-4


def test_a_plain_call_reaches_the_base_attention_under_its_own_name(tiny_model_dir):
    """Issue 23, finding 7: transformers' flash-attention entry passes ``config._attn_implementation`` on (to pick
    the kernel); after the switch to ``mem1_packed`` it would ask for a Hub kernel of that name. A registered base
    attention records what it sees, as flash-attention's entry reads it."""
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    seen: list[str] = []

    def probe(module, *args, **kwargs):
        seen.append(module.config._attn_implementation)
        return sdpa_attention_forward(module, *args, **kwargs)

    AttentionInterface.register("mem1_test_probe", probe)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    model.set_attn_implementation("mem1_test_probe")
    ids = torch.arange(3, 11)[None]
    with torch.no_grad():
        before = model(input_ids=ids).logits
        enable_packed_attention(model)
        after = model(input_ids=ids).logits  # a plain (non-MEM1) call after the switch
    assert set(seen) == {"mem1_test_probe"} and len(seen) == 2 * model.config.num_hidden_layers
    assert model.config._attn_implementation == MEM1_ATTENTION  # restored after each call
    assert torch.equal(before, after)


def test_varlen_attn_keywords_fit_each_torch_signature():
    """Issue 23, finding 4: the flash backend's PyTorch fallback passed ``enable_gqa``, which torch 2.11's
    ``varlen_attn`` lacks (TypeError on the GPU machine). The keywords follow the installed signature; torch 2.10's
    and 2.11's are rebuilt here from their parameter lists."""
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    from verl_mem1.training.attention import varlen_attn_kwargs

    def torch_2_10(
        query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, return_aux=None, scale=None
    ):
        pass

    def torch_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                   window_size=(-1, -1)):  # fmt: skip
        pass

    args = (None,) * 7
    for fn in (varlen_attn, torch_2_10, torch_2_11):
        signature = inspect.signature(fn)
        for heads in ((8, 8), (8, 2)):
            kwargs, repeat = varlen_attn_kwargs(signature, *heads)
            signature.bind(*args, scale=0.1, **kwargs)  # a TypeError here is the GPU machine's failure
            gqa = heads[0] != heads[1]
            assert repeat == (gqa and "enable_gqa" not in signature.parameters), (fn, heads)
            assert kwargs.get("window_size", (-1, 0)) == (-1, 0) and kwargs.get("is_causal", True)
    assert varlen_attn_kwargs(inspect.signature(torch_2_11), 8, 2) == ({"window_size": (-1, 0)}, True)
    with pytest.raises(TypeError, match="neither window_size nor is_causal"):
        varlen_attn_kwargs(inspect.signature(lambda q, k, v: None), 8, 8)
