"""verl's FSDP engines, made MEM1-aware: packed samples get their restarting positions and the block-sparse mask.

verl 0.9's FSDP engine (``verl/workers/engine/fsdp/transformer_impl.py``) feeds the model sequential position
ids and plain causal (varlen) attention over each sample. A packed MEM1 sample (``[prompt | seg_1 | ... ]``,
see ``training/layout.py``) needs every segment to restart its positions at ``P`` and to see only the prompt
and itself, or the training log-probs differ from the rollout's. The subclasses here change the minimum:

- ``prepare_model_inputs``: for samples whose row carries ``mem1_position_ids`` / ``mem1_segment_ids`` (put there
  by the MEM1 agent loop, through ``AgentLoopOutput.extra_fields``), replace the position ids and attach the MEM1
  mask for the whole micro-batch row (``attention.py``: dense / flex / segmented / flash). Every other sample
  becomes one causal segment of its own, so mixed batches stay exact.
- ``prepare_model_outputs``: verl reads the output at position ``i - 1`` for token ``i``. That is the token's
  predictor except for the first token of a segment with no context copy, whose predictor is the last prompt
  position; those few outputs (log-prob, entropy, Σπ², value) are recomputed from the right row.
- ``_build_fsdp_module``: on the plug-in's CPU platform, verl's forward-only (reference) engine offloads unpinned
  (``cpu_platform.unpinned_cpu_offload``); verl's build is unchanged elsewhere.
- ``optimizer_step``: no optimizer step where every gradient is exactly zero (a GRPO mini-batch whose groups all
  scored alike, with no entropy or KL term): Adam would still move the weights on its momentum and weight decay.

Batches without MEM1 fields take verl's code path unchanged. The engines are registered in verl's
``EngineRegistry`` under the vendor key ``(device, "mem1")`` only, which ``EngineRegistry.get_engine_cls`` looks up
when ``VERL_ENGINE_VENDOR=mem1`` (verl's own override of the detected vendor): the MEM1 recipes set it for every Ray
worker (``recipes/cluster.yaml``) and ``mem1 sft`` for its trainer. Any other verl run, with the plug-in installed,
keeps verl's stock engines.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

from verl_mem1.training import hf_attention
from verl_mem1.training.attention import attention_backend, dense_mask
from verl_mem1.training.hf_attention import attention_inputs, needs_mask_skip, skip_mask_creation
from verl_mem1.training.layout import predictor_positions, renumber_segments
from verl_mem1.training.verl_plugin.fields import ATTENTION_KEY, ENGINE_VENDOR, POSITION_KEY, SEGMENT_KEY

logger = logging.getLogger(__name__)

_OUTPUT_ARGS_KEY = "mem1"
# The devices the MEM1 engines take the vendor key ENGINE_VENDOR on: verl's FSDP engines' and the plug-in's CPU platform
ENGINE_DEVICES = ("cuda", "npu", "cpu")
FSDP_BACKENDS = ("fsdp", "fsdp2")


# ------------------------------------------------------------------------------------------ batch layout


def _as_list(value: Any, n: int) -> list[Any]:
    """A per-sample column of a verl TensorDict (NonTensorStack, NonTensorData, array or list) as a list."""
    if hasattr(value, "tolist") and not isinstance(value, torch.Tensor):
        items = value.tolist()
    elif hasattr(value, "data") and not isinstance(value, torch.Tensor):  # NonTensorData: one value for all rows
        items = [value.data] * n
    else:
        items = list(value)
    if len(items) != n:
        raise ValueError(f"MEM1 column has {len(items)} entries for {n} samples")
    return items


def mem1_columns(micro_batch: Any, n: int) -> tuple[list[Any], list[Any], list[Any]] | None:
    """Per-sample (position ids, segment ids, attention backend) of a micro-batch, or None when no sample is a MEM1
    one.

    verl's legacy DataProto path turns each ``extra_fields`` key into its own column; the TransferQueue (v1)
    path keeps ``extra_fields`` as one dict per sample. Both are read.
    """
    keys = set(micro_batch.keys())
    names = (POSITION_KEY, SEGMENT_KEY, ATTENTION_KEY)
    if SEGMENT_KEY in keys and POSITION_KEY in keys:
        columns = [_as_list(micro_batch[k], n) if k in keys else [None] * n for k in names]
    elif "extra_fields" in keys:
        extras = _as_list(micro_batch["extra_fields"], n)
        columns = [[e.get(k) if isinstance(e, Mapping) else None for e in extras] for k in names]
    else:
        return None
    if all(s is None for s in columns[1]):
        return None
    return columns[0], columns[1], columns[2]


@dataclass
class Mem1RowLayout:
    """A micro-batch's samples laid out as verl lays them out (nested order), with the MEM1 rule on top.

    ``segment_ids`` / ``prompt_segment_ids`` follow ``attention.mask_rule`` over the concatenated row: each MEM1
    sample's prompt and segments get fresh ids, every other sample is one causal segment. ``fix_dst`` are the
    nested-output indices whose value must come from another position (``fix_src``, nested index;
    ``fix_sample``/``fix_src_local``: the same position as (sample, offset)).
    """

    offsets: list[int]
    positions: list[torch.Tensor | None]
    segment_ids: torch.Tensor
    prompt_segment_ids: torch.Tensor
    fix_dst: torch.Tensor
    fix_src: torch.Tensor
    fix_sample: torch.Tensor
    fix_src_local: torch.Tensor

    @property
    def total(self) -> int:
        return self.offsets[-1]

    def position_row(self, verl_positions: torch.Tensor) -> torch.Tensor:
        """verl's 1-D packed position ids with every MEM1 sample's slice replaced by its restarting positions."""
        row = verl_positions.clone()
        for b, pos in enumerate(self.positions):
            if pos is not None:
                row[self.offsets[b] : self.offsets[b + 1]] = pos.to(row.device, row.dtype)
        return row


def _tensor(value: Any, name: str, index: int) -> torch.Tensor:
    t = torch.as_tensor(value.tolist() if hasattr(value, "tolist") else list(value), dtype=torch.long)
    if t.dim() != 1:
        raise ValueError(f"sample {index}: {name} must be 1-D, got shape {tuple(t.shape)}")
    return t


def mem1_row_layout(
    lengths: Sequence[int],
    positions: Sequence[Any],
    segments: Sequence[Any],
    trainable: Sequence[bool] | None = None,
) -> Mem1RowLayout:
    """Build the row layout from per-sample lengths and (possibly None) MEM1 position / segment ids.

    ``trainable[b]`` is False for a sample with no token in the loss. Such a sample whose MEM1 ids do not fit its
    length is verl's synthetic padding (``trainer/ppo/padding_utils.py`` builds a 128-token no-op sample and copies
    the first real sample's ``extra_fields`` onto it): it becomes a plain causal sample. A trainable sample that does
    not fit is an error.
    """
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + int(n))
    seg_parts, pseg_parts, pos_out = [], [], []
    dst, src, sample_idx, src_local = [], [], [], []
    next_id = 0
    for b, (n, pos, seg) in enumerate(zip(lengths, positions, segments, strict=True)):
        n = int(n)
        if seg is not None and trainable is not None and not trainable[b] and _id_count(seg) != n:
            seg = pos = None  # verl's padding sample, carrying a copy of another sample's MEM1 ids
        if seg is None:
            seg_parts.append(torch.full((n,), next_id, dtype=torch.long))
            pseg_parts.append(torch.full((n,), next_id, dtype=torch.long))
            pos_out.append(None)
            next_id += 1
            continue
        seg_t, pos_t = _tensor(seg, SEGMENT_KEY, b), _tensor(pos, POSITION_KEY, b)
        if seg_t.numel() != n or pos_t.numel() != n:
            raise ValueError(
                f"sample {b}: {seg_t.numel()} MEM1 segment ids and {pos_t.numel()} position ids for a sequence of "
                f"{n} tokens; the packed sample was changed after the agent loop (truncated or re-padded?)"
            )
        prompt_len = int((seg_t == 0).sum())
        if prompt_len == 0 or bool((seg_t[:prompt_len] != 0).any()):
            raise ValueError(f"sample {b}: MEM1 segment ids must start with the prompt (segment 0)")
        # verl reads token i's output at i - 1: fix the positions whose predictor (layout.py's rule) is elsewhere
        pred = predictor_positions(seg_t, prompt_len)
        for i in torch.nonzero((pred >= 0) & (pred != torch.arange(n) - 1)).flatten().tolist():
            dst.append(offsets[b] + i - 1)
            src.append(offsets[b] + int(pred[i]))
            sample_idx.append(b)
            src_local.append(int(pred[i]))
        seg_t, pseg_t, next_id = renumber_segments(seg_t, torch.zeros_like(seg_t), next_id)
        seg_parts.append(seg_t)
        pseg_parts.append(pseg_t)
        pos_out.append(pos_t)
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return Mem1RowLayout(
        offsets=offsets,
        positions=pos_out,
        segment_ids=torch.cat(seg_parts) if seg_parts else torch.zeros(0, dtype=torch.long),
        prompt_segment_ids=torch.cat(pseg_parts) if pseg_parts else torch.zeros(0, dtype=torch.long),
        fix_dst=as_long(dst),
        fix_src=as_long(src),
        fix_sample=as_long(sample_idx),
        fix_src_local=as_long(src_local),
    )


def _id_count(ids: Any) -> int:
    return int(ids.numel()) if isinstance(ids, torch.Tensor) else len(ids)


def _pad_segments(layout: Mem1RowLayout, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment ids for a row of ``length`` (verl may append pad tokens): the tail is one causal segment."""
    seg, pseg = layout.segment_ids, layout.prompt_segment_ids
    pad = length - seg.numel()
    if pad < 0:
        raise ValueError(f"packed row of {length} tokens is shorter than its {seg.numel()} sample tokens")
    if pad:
        tail = torch.full((pad,), int(seg.max()) + 1 if seg.numel() else 0, dtype=torch.long)
        seg, pseg = torch.cat([seg, tail]), torch.cat([pseg, tail])
    return seg, pseg


def _trainable(micro_batch: Any, n: int) -> list[bool] | None:
    """Per sample: does any of its tokens count in the loss (verl's ``loss_mask``, else ``response_mask``)?"""
    keys = set(micro_batch.keys())
    for key in ("loss_mask", "response_mask"):
        if key in keys:
            mask = micro_batch[key]
            rows = mask.unbind(0) if getattr(mask, "is_nested", False) else list(mask)
            if len(rows) == n:
                return [bool(row.any()) for row in rows]
    return None


# ---------------------------------------------------------------------------------------------- backends


def _hf_model(module: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside verl's FSDP (1 or 2) / PEFT wrappers."""
    from transformers import PreTrainedModel

    for m in module.modules():
        if isinstance(m, PreTrainedModel):
            return m
    raise TypeError(f"no Hugging Face PreTrainedModel inside {type(module).__name__}")


def _replace(nested: torch.Tensor, dst: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A jagged nested tensor with ``values`` written at flat indices ``dst`` (out of place, autograd-safe)."""
    flat = nested.values()
    flat = flat.index_put((dst.to(flat.device),), values.to(flat.device, flat.dtype))
    return torch.nested.nested_tensor_from_jagged(flat, nested.offsets())


# ----------------------------------------------------------------------------------------------- engines


def any_nonzero_gradient(module: torch.nn.Module) -> bool:
    """Whether any gradient this rank holds (its FSDP shards: a DTensor's local part) has a non-zero entry."""
    for param in module.parameters():
        grad = param.grad
        if grad is None:
            continue
        local = grad.to_local() if hasattr(grad, "to_local") else grad
        if bool(local.count_nonzero()):
            return True
    return False


def _skipped_step(*args: Any, **kwargs: Any) -> None:
    return None


class MEM1EngineMixin:
    """The MEM1 additions shared by the policy (LM head) and critic (value head) FSDP engines."""

    mem1_backend: str | None = None  # set from the samples' mem1.attention on first use
    mem1_attention: str | None = None  # the mem1.attention the first MEM1 sample named

    def _mem1_backend(self, configured: str | None = None) -> str:
        """The packed-attention backend of this engine, resolved once from the first MEM1 sample's ``mem1.attention``;
        a later sample naming another fails (one run, one recipe value: two would mean two configs met here)."""
        if configured is not None:
            if self.mem1_attention is None:
                self.mem1_attention = configured
            elif configured != self.mem1_attention:
                raise ValueError(
                    f"a MEM1 sample asks for mem1.attention={configured!r}, but this engine runs the "
                    f"{self.mem1_attention!r} its first sample named: one run must use one mem1.attention"
                )
        if self.mem1_backend is None:
            from verl.utils import device as verl_device

            # the device verl moves each micro-batch to, not the parameters': a CPU-offloaded engine (the reference
            # policy) keeps them on the host while it computes on the accelerator
            device = verl_device.get_device_name()
            self.mem1_backend = attention_backend(configured or "auto", device)  # $MEM1_ATTENTION_BACKEND wins
            logger.info("MEM1 packed attention backend: %s", self.mem1_backend)
        from verl_mem1.training.forward import resolve_backend

        return resolve_backend(self.module, self.mem1_backend)  # flex has no CPU backward: segmented there

    def _mem1_layout(self, micro_batch: Any) -> Mem1RowLayout | None:
        n = micro_batch.batch_size[0]
        columns = mem1_columns(micro_batch, n)
        if columns is None:
            return None
        positions, segments, backends = columns
        self._mem1_backend(next((b for b in backends if b), None))
        lengths = micro_batch["input_ids"].offsets().diff().tolist()
        return mem1_row_layout(lengths, positions, segments, _trainable(micro_batch, n))

    def _mem1_check(self, micro_batch: Any) -> None:
        from verl.utils import tensordict_utils as tu

        if getattr(self, "use_ulysses_sp", False):
            raise NotImplementedError("MEM1 packed samples do not support Ulysses sequence parallelism (sp > 1)")
        if tu.get_non_tensor_data(data=micro_batch, key="use_fused_kernels", default=False):
            raise NotImplementedError("MEM1 packed samples need the logits: set model.use_fused_kernels=False")
        if tu.get_non_tensor_data(data=micro_batch, key="distillation_use_topk", default=False):
            raise NotImplementedError("MEM1 packed samples do not support top-k distillation")
        if micro_batch["position_ids"].dim() == 3:
            raise NotImplementedError("MEM1 packed samples do not support multi-dimensional (mRoPE) position ids")

    def _build_fsdp_module(self, module):
        from verl_mem1.training.verl_plugin.cpu_platform import on_cpu_platform, unpinned_cpu_offload

        with unpinned_cpu_offload() if on_cpu_platform() else contextlib.nullcontext():
            return super()._build_fsdp_module(module)

    def optimizer_step(self):
        """verl's step (gradient clipping, whose norm is reduced across ranks, then the optimizer), with the optimizer's
        update left out on a rank whose gradients are all exactly zero. Returns verl's grad norm (0.0 then)."""
        if any_nonzero_gradient(self.module):
            return super().optimizer_step()
        optimizer = self.optimizer
        own = vars(optimizer).get("step")  # an LR scheduler wraps the step in an instance attribute
        optimizer.step = _skipped_step  # also what GradScaler.step calls
        try:
            grad_norm = super().optimizer_step()
        finally:
            if own is None:
                del optimizer.step
            else:
                optimizer.step = own
        optimizer.zero_grad()
        logger.info("every gradient was zero: optimizer step skipped")
        return grad_norm

    def forward_step(self, micro_batch: Any, loss_function: Any, forward_only: bool):
        columns = mem1_columns(micro_batch, micro_batch.batch_size[0])
        if columns is None:
            return super().forward_step(micro_batch, loss_function, forward_only)
        with skip_mask_creation(needs_mask_skip(self._mem1_backend(next((b for b in columns[2] if b), None)))):
            return super().forward_step(micro_batch, loss_function, forward_only)

    def prepare_model_inputs(self, micro_batch: Any):
        from verl.utils import tensordict_utils as tu

        layout = self._mem1_layout(micro_batch)
        if layout is not None:
            self._mem1_check(micro_batch)
        model_inputs, output_args = super().prepare_model_inputs(micro_batch)
        if layout is None:
            return model_inputs, output_args
        hf_attention.enable_packed_attention(_hf_model(self.module))  # idempotent; plain calls keep the old kernel
        use_remove_padding = tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True)
        if use_remove_padding:
            backend = self._mem1_backend()
            input_ids = model_inputs["input_ids"]  # (1, total + pad)
            positions = model_inputs["position_ids"].clone()
            positions[0, : layout.total] = layout.position_row(positions[0, : layout.total])
            seg, pseg = _pad_segments(layout, input_ids.shape[-1])
            seg, pseg = seg.to(input_ids.device), pseg.to(input_ids.device)
            model_inputs["position_ids"] = positions
            model_inputs.update(attention_inputs(backend, seg, pseg, compile_flex=True))  # eager flex: every score
        else:  # padded (bsz, L) rows: one dense 4-D mask per row
            model_inputs.update(self._padded_inputs(model_inputs, layout))
        output_args[_OUTPUT_ARGS_KEY] = layout
        return model_inputs, output_args

    @staticmethod
    def _padded_inputs(model_inputs: dict[str, Any], layout: Mem1RowLayout) -> dict[str, Any]:
        input_ids, positions = model_inputs["input_ids"], model_inputs["position_ids"].clone()
        bsz, width = input_ids.shape
        device = input_ids.device
        mask = torch.zeros(bsz, 1, width, width, dtype=torch.bool, device=device)
        for b in range(bsz):
            a, e = layout.offsets[b], layout.offsets[b + 1]
            n = e - a
            if layout.positions[b] is not None:
                positions[b, :n] = layout.positions[b].to(device, positions.dtype)
            seg = (layout.segment_ids[a:e] - layout.prompt_segment_ids[a:e]).to(device)  # local ids, prompt 0
            mask[b, 0, :n, :n] = dense_mask(seg)[0, 0]
            idle = torch.arange(n, width, device=device)
            mask[b, 0, idle, idle] = True  # padding queries see themselves only (no all-masked softmax rows)
        return {"input_ids": input_ids, "position_ids": positions, "attention_mask": mask, "mem1_backend": "dense"}

    def prepare_model_outputs(self, output: Any, output_args: dict, micro_batch: Any, logits_processor_func: Any):
        model_output = super().prepare_model_outputs(output, output_args, micro_batch, logits_processor_func)
        layout: Mem1RowLayout | None = output_args.get(_OUTPUT_ARGS_KEY)
        if layout is None or layout.fix_dst.numel() == 0:
            return model_output
        return self._mem1_fix_outputs(model_output, output, output_args, micro_batch, layout)

    def _mem1_fix_outputs(self, model_output, output, output_args, micro_batch, layout):  # pragma: no cover
        raise NotImplementedError


class MEM1FSDPEngineWithLMHead(MEM1EngineMixin, FSDPEngineWithLMHead):
    """verl's FSDP policy/reference engine with MEM1 packed samples scored under exactly their rollout contexts."""

    def _mem1_fix_outputs(self, model_output, output, output_args, micro_batch, layout):
        from verl.utils import tensordict_utils as tu

        logits = output.logits
        if hasattr(logits, "full_tensor"):  # DTensor under tensor parallelism
            logits = logits.full_tensor()
        if tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True):
            rows = logits[0].index_select(0, layout.fix_src.to(logits.device))
            temperature = output_args["temperature_rmpad"].index_select(0, layout.fix_dst.to(logits.device))
        else:
            rows = logits[layout.fix_sample.to(logits.device), layout.fix_src_local.to(logits.device)]
            temperature = output_args["temperature"].index_select(0, layout.fix_sample.to(logits.device))
        logp = torch.log_softmax(rows.float() / temperature.float().clamp(min=1e-8)[:, None], dim=-1)
        dst = layout.fix_dst
        if model_output.get("log_probs") is not None:
            labels = output_args["input_ids_rmpad_rolled"].index_select(0, dst.to(logits.device))
            model_output["log_probs"] = _replace(model_output["log_probs"], dst, logp.gather(1, labels[:, None])[:, 0])
        if "entropy" in model_output:
            model_output["entropy"] = _replace(model_output["entropy"], dst, -(logp.exp() * logp).sum(-1))
        if "sum_pi_squared" in model_output:
            model_output["sum_pi_squared"] = _replace(model_output["sum_pi_squared"], dst, logp.exp().pow(2).sum(-1))
        return model_output


class MEM1FSDPEngineWithValueHead(MEM1EngineMixin, FSDPEngineWithValueHead):
    """verl's FSDP critic engine with MEM1 packed samples: each token's value is read at its predictor position."""

    def _mem1_fix_outputs(self, model_output, output, output_args, micro_batch, layout):
        values = model_output["values"]
        flat = values.values()
        model_output["values"] = _replace(values, layout.fix_dst, flat.index_select(0, layout.fix_src.to(flat.device)))
        return model_output


ENGINES = {"language_model": MEM1FSDPEngineWithLMHead, "value_model": MEM1FSDPEngineWithValueHead}


_REGISTERED: set[tuple[str, str, str, str]] = set()  # (model_type, backend, device, vendor) this process registered


def register_engines() -> None:
    """Register the MEM1 engines with verl's ``EngineRegistry`` for fsdp/fsdp2 under ``(device, "mem1")`` on every
    device (idempotent).

    Only the registry's public decorator is used. A key some other plug-in already holds (the decorator refuses a
    second registration) is left to it, with a warning: that device then runs without MEM1.
    """
    for model_type, cls in ENGINES.items():
        for backend in FSDP_BACKENDS:
            for device in ENGINE_DEVICES:
                key = (model_type, backend, device, ENGINE_VENDOR)
                if key in _REGISTERED:
                    continue
                try:
                    EngineRegistry.register(
                        model_type=model_type, backend=backend, device=device, vendor=ENGINE_VENDOR
                    )(cls)
                except AssertionError:
                    logger.warning(
                        "EngineRegistry[%s][%s][%s] is taken by another engine; MEM1 packed samples will not be "
                        "exact there",
                        model_type,
                        backend,
                        (device, ENGINE_VENDOR),
                    )
                _REGISTERED.add(key)


register_engines()
