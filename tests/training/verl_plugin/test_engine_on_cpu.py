"""The MEM1 FSDP engines' input preparation: verl's ``forward_step``/``prepare_model_inputs``/
``prepare_model_outputs`` on the tiny model (FSDP wrapping and ``torch.distributed`` left out), fed by both of verl's
agent-loop post-processing paths (the legacy ``AgentLoopWorker`` and the TransferQueue field layout) and its
padding helpers. The acceptance check is DESIGN.md's: every generated token's training log-prob equals the
rollout's and the dense packed reference within 1e-4 (fp32)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tests.training.records import make_record
from tests.training.verl_plugin.common import TEMPERATURE, TOL, row_kwargs
from verl_mem1.training.verl_plugin.engine import MEM1FSDPEngineWithLMHead, MEM1FSDPEngineWithValueHead
from verl_mem1.training.verl_plugin.fields import POSITION_KEY, SEGMENT_KEY


@pytest.fixture
def cpu_device(monkeypatch):
    """verl's engine moves micro-batches to ``get_device_id()`` (CUDA): point it at the CPU."""
    import verl.workers.engine.fsdp.transformer_impl as impl

    monkeypatch.setattr(impl, "get_device_id", lambda: "cpu")
    monkeypatch.setattr(impl, "get_device_name", lambda: "cpu")


def make_engine(cls, module, backend: str):
    """A verl FSDP engine object around an unwrapped module (FSDP sharding needs GPUs and a process group)."""
    import verl.utils.torch_functional as verl_F
    from verl.workers.config import FSDPEngineConfig

    engine = object.__new__(cls)
    engine.module = module
    engine.engine_config = FSDPEngineConfig(use_torch_compile=False, strategy="fsdp2")
    engine.use_ulysses_sp, engine.ulysses_sequence_parallel_size = False, 1
    engine.pad_to_length, engine.pad_to_length_bucket = False, 1024
    engine._autocast_dtype = torch.float32
    engine.compute_entropy_from_logits = verl_F.entropy_from_logits
    engine.mem1_backend = backend
    return engine


def run_engine(engine, td, *, remove_padding: bool, entropy: bool = True):
    from verl.utils import tensordict_utils as tu

    tu.assign_non_tensor(td, temperature=TEMPERATURE, use_remove_padding=remove_padding, calculate_entropy=entropy)
    with torch.no_grad():
        _, out = engine.forward_step(td, loss_function=None, forward_only=True)
    return out["model_output"]


def legacy_batch(trainer_config, tokenizer, outputs, rows):
    """verl's legacy path: AgentLoopWorker post-processing -> DataProto -> TensorDict without padding."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.utils.padding import left_right_2_no_padding

    worker = object.__new__(AgentLoopWorker)
    worker.rollout_config = omega_conf_to_dataclass(trainer_config.actor_rollout_ref.rollout)
    worker.tokenizer, worker.processor, worker.mm_processor_kwargs = tokenizer, None, {}
    worker.reward_loop_worker_handles, worker.distillation_enabled = None, False

    async def post():
        return [
            await worker._agent_loop_postprocess(o, False, **row_kwargs(r)) for o, r in zip(outputs, rows, strict=True)
        ]

    batch = worker._postprocess(asyncio.run(post()))
    return left_right_2_no_padding(batch.to_tensordict())


def tq_fields(outputs, rows) -> list[dict]:
    """verl's v1 path: the per-sample fields ``AgentLoopWorkerTQ._agent_loop_postprocess`` stores in TransferQueue."""
    fields = []
    for output, row in zip(outputs, rows, strict=True):
        field = output.as_dict()
        field.update({k: v for k, v in row_kwargs(row).items() if k in ("data_source", "uid", "index")})
        field["loss_mask"] = field["response_mask"]
        field["input_ids"] = torch.cat([field["prompts"], field["responses"]])
        field["position_ids"] = torch.arange(field["input_ids"].numel())  # what _compute_position_ids gives
        field.pop("multi_modal_data", None)
        fields.append(field)
    return fields


def tq_batch(outputs, rows):
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    return list_of_dict_to_tensordict(tq_fields(outputs, rows))


def plain_output(tokenizer, text: str, prompt_len: int = 4):
    """A sample from another agent loop (no MEM1 fields), with the keys verl's single-turn loop sets."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput

    ids = tokenizer.encode(text)
    n = len(ids) - prompt_len
    return AgentLoopOutput(
        prompt_ids=ids[:prompt_len], response_ids=ids[prompt_len:], response_mask=[1] * n,
        response_logprobs=[0.0] * n, reward_score=0.0, num_turns=2, metrics=AgentLoopMetrics(),
        extra_fields={"turn_scores": []},
    )  # fmt: skip


def reference_logprobs(model, records):
    from verl_mem1.training.forward import packed_logprobs_and_entropy
    from verl_mem1.training.layout import pack_episode

    out = []
    with torch.no_grad():
        for record in records:
            lp, ent = packed_logprobs_and_entropy(model, pack_episode(record), backend="dense")
            out.append((lp, ent))
    return out


def plain_reference(model, output) -> torch.Tensor:
    """Log-probs of a plain sample's response from one ordinary causal forward."""
    ids = output.prompt_ids + output.response_ids
    p = len(output.prompt_ids)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits / TEMPERATURE, -1)[torch.arange(p - 1, len(ids) - 1), ids[p:]]


def check_mem1_sample(got: torch.Tensor, output, reference: torch.Tensor) -> None:
    """``got``: the response log-probs verl reads for one MEM1 sample; vs the rollout's and the dense reference."""
    mask = torch.tensor(output.response_mask).bool()
    rollout = torch.tensor(output.response_logprobs)[mask]
    assert int(mask.sum()) == reference.numel() > 0
    assert (got[mask] - rollout).abs().max() <= TOL
    assert (got[mask] - reference).abs().max() <= TOL


def test_engine_reproduces_rollout_logprobs_legacy_path(
    trainer_config, tiny_backend, training_model, episodes, rows, cpu_device
):
    """verl's legacy path (extra fields become columns) through the default CPU backend (segmented: the flash
    layout in plain SDPA), in a micro-batch that also holds another agent loop's plain sample."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine.utils import prepare_micro_batches
    from verl.workers.utils.padding import no_padding_2_padding

    (record,), (output,) = episodes
    reference = reference_logprobs(training_model, [record])[0][0]
    plain = plain_output(tiny_backend.tokenizer, "The capital of France is Paris, and")
    td = legacy_batch(trainer_config, tiny_backend.tokenizer, [plain, output], [rows[0], rows[0]])
    lengths = [len(o.prompt_ids) + len(o.response_ids) for o in (plain, output)]
    assert td["input_ids"].offsets().diff().tolist() == lengths
    engine = make_engine(MEM1FSDPEngineWithLMHead, training_model, "segmented")
    model_output = run_engine(engine, td, remove_padding=True, entropy=False)
    log_probs = no_padding_2_padding(model_output["log_probs"], td)  # what the legacy trainer reads
    check_mem1_sample(log_probs[1][: len(output.response_ids)], output, reference)
    assert (log_probs[0][: len(plain.response_ids)] - plain_reference(training_model, plain)).abs().max() <= TOL
    # verl's micro-batching (dynamic batch size: one sample each here) keeps the MEM1 columns with their samples
    tu.assign_non_tensor(td, use_dynamic_bsz=True, max_token_len_per_gpu=max(lengths))
    micro_batches, _ = prepare_micro_batches(td)
    assert len(micro_batches) == 2
    layouts = [lay for lay in map(engine._mem1_layout, micro_batches) if lay is not None]  # None: plain only
    assert [lay.total for lay in layouts] == [lengths[1]] and layouts[0].positions[0] is not None
    # GRPO siblings of equal length: verl's object columns keep one list per sample
    twins = legacy_batch(trainer_config, tiny_backend.tokenizer, [output, output], [rows[0], rows[0]])
    layout = engine._mem1_layout(twins)
    assert layout.offsets == [0, lengths[1], 2 * lengths[1]] and torch.equal(layout.positions[0], layout.positions[1])


def test_engine_tq_path(tiny_backend, training_model, episodes, cpu_device):
    """verl's v1 field layout (``extra_fields`` dicts per sample) through the dense reference mask over the packed
    micro-batch row, next to a plain sample (padded rows: see the predictor test below)."""
    from verl.workers.utils.padding import response_from_nested

    (record,), (output,) = episodes
    plain = plain_output(tiny_backend.tokenizer, "The capital of France is Paris, and")
    td = tq_batch([output, plain], [{"uid": "a"}, {"uid": "b"}])
    engine = make_engine(MEM1FSDPEngineWithLMHead, training_model, "dense")
    model_output = run_engine(engine, td, remove_padding=True, entropy=False)
    log_probs = response_from_nested(model_output["log_probs"], td["response_mask"])  # what the v1 trainer reads
    check_mem1_sample(log_probs[0], output, reference_logprobs(training_model, [record])[0][0])
    assert (log_probs[1] - plain_reference(training_model, plain)).abs().max() <= TOL  # plain stays plain causal


def test_engine_compiles_flex_when_it_runs_flex(tiny_backend, training_model, episodes, cpu_device):
    """Issue 23, finding 4: the engine built flex inputs uncompiled, and eager flex materialises every score. Asked
    for by name (here forward-only on CPU, where flex still runs), flex goes to the compiled kernel."""
    from verl.utils import tensordict_utils as tu

    (_, (output,)) = episodes
    td = tq_batch([output, plain_output(tiny_backend.tokenizer, "The capital of France is")], [{"uid": "a"}] * 2)
    tu.assign_non_tensor(td, temperature=TEMPERATURE, use_remove_padding=True)
    engine = make_engine(MEM1FSDPEngineWithLMHead, training_model, "flex")
    with torch.no_grad():
        inputs, _ = engine.prepare_model_inputs(td)
    assert inputs["mem1_backend"] == "flex" and inputs["mem1_flex_compile"] is True


def test_engine_reads_each_segments_first_token_at_its_predictor(
    tiny_backend, training_model, tiny_model_dir, cpu_device
):
    """A segment with no context copy is predicted by the prompt's last position, not by the previous segment's
    last token (where verl reads it): log-probs, entropies and critic values come from the right row."""
    from transformers import AutoModelForTokenClassification

    from verl_mem1.training.forward import packed_logprobs_and_entropy, packed_values
    from verl_mem1.training.layout import pack_episode
    from verl_mem1.training.verl_plugin.engine import mem1_row_layout

    prompt = tiny_backend.tokenizer.encode("Question: who wrote Stardust? Answer:")
    p = len(prompt)
    record = make_record(
        prompt,
        [
            (prompt, [101, 102, 103], [0.0] * 3),
            (prompt, [201, 202], [0.0] * 2),  # context == prompt: empty copy, first token predicted at P - 1
            (prompt + [7, 8, 9], [301, 302], [0.0] * 2),
        ],
        temperature=TEMPERATURE,
    )
    sample = pack_episode(record)
    layout = mem1_row_layout([sample.length], [sample.position_ids], [sample.segment_ids])
    # segments 2 and 3 start at P + 3 and P + 5: their first tokens are read from the prompt's last position
    assert layout.fix_dst.tolist() == [p + 3 - 1, p + 5 - 1] and layout.fix_src.tolist() == [p - 1, p - 1]
    extra = {POSITION_KEY: sample.position_ids.tolist(), SEGMENT_KEY: sample.segment_ids.tolist()}
    ids = sample.input_ids.tolist()
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput
    from verl.workers.utils.padding import response_from_nested

    output = AgentLoopOutput(
        prompt_ids=ids[:p], response_ids=ids[p:], response_mask=sample.loss_mask[p:].tolist(),
        response_logprobs=[0.0] * (len(ids) - p), reward_score=0.0, num_turns=3, metrics=AgentLoopMetrics(),
        extra_fields=extra,
    )  # fmt: skip
    row = {"data_source": "test", "uid": "u", "index": 0}
    # verl nests (rather than stacks) only rows of unequal length: pair the sample with a plain one
    other = plain_output(tiny_backend.tokenizer, "Once upon a time, in a land far away")
    mask = sample.loss_mask[p:].bool()
    with torch.no_grad():
        ref_lp, ref_ent = packed_logprobs_and_entropy(training_model, sample, backend="dense")
    for backend, remove_padding in (("dense", True), ("segmented", True), ("dense", False)):
        td = tq_batch([output, other], [row, row])
        engine = make_engine(MEM1FSDPEngineWithLMHead, training_model, backend)
        out = run_engine(engine, td, remove_padding=remove_padding)
        lp = response_from_nested(out["log_probs"], td["response_mask"])[0][mask]
        ent = response_from_nested(out["entropy"], td["response_mask"])[0][mask]
        assert (lp - ref_lp).abs().max() <= TOL and (ent - ref_ent).abs().max() <= TOL, (backend, remove_padding)

    torch.manual_seed(0)
    critic = AutoModelForTokenClassification.from_pretrained(str(tiny_model_dir), num_labels=1, dtype=torch.float32)
    critic.eval()
    with torch.no_grad():
        ref_values = packed_values(critic, sample, backend="dense")
    td = tq_batch([output, other], [row, row])
    engine = make_engine(MEM1FSDPEngineWithValueHead, critic, "segmented")
    out = run_engine(engine, td, remove_padding=True, entropy=False)
    values = response_from_nested(out["values"], td["response_mask"])[0][mask]
    assert (values - ref_values).abs().max() <= TOL


def test_engine_leaves_plain_batches_to_verl(tiny_backend, training_model, cpu_device):
    """No MEM1 fields: verl's own path, untouched (no mask, sequential positions, attention not switched)."""
    texts = ("Once upon a time there was a king", "Hello world, how are you all")
    outputs = [plain_output(tiny_backend.tokenizer, t) for t in texts]
    td = tq_batch(outputs, [{"uid": "u"}] * 2)
    lengths = [len(o.prompt_ids) + len(o.response_ids) for o in outputs]
    engine = make_engine(MEM1FSDPEngineWithLMHead, training_model, "dense")
    from verl.utils import tensordict_utils as tu

    tu.assign_non_tensor(td, temperature=1.0, use_remove_padding=True)
    inputs, args = engine.prepare_model_inputs(td)
    assert "mem1_backend" not in inputs and inputs["attention_mask"] is None and "mem1" not in args
    assert inputs["position_ids"][0].tolist() == [i for n in lengths for i in range(n)]


def test_engine_takes_verls_padding_sample_as_a_plain_one(tiny_backend, training_model, episodes, cpu_device):
    """verl's v1 trainer pads a batch to a divisible size with a 128-token no-op sample whose fields are a deep copy
    of the first real sample's (``padding_utils.construct_minimal_padding_template``), MEM1 ids included. It has no
    token in the loss: the engine scores it as one plain causal sample and the real sample stays exact. A trainable
    sample whose ids do not fit is still an error."""
    from verl.trainer.ppo.padding_utils import SYNTHETIC_PADDING_SEQ_LEN, construct_minimal_padding_template
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict
    from verl.workers.utils.padding import response_from_nested

    (record,), (output,) = episodes
    (field,) = tq_fields([output], [{"uid": "a"}])
    eos = tiny_backend.tokenizer.eos_token_id
    pad, tag = construct_minimal_padding_template(field, {}, eos)
    assert tag["is_padding"] and len(pad["extra_fields"][SEGMENT_KEY]) != SYNTHETIC_PADDING_SEQ_LEN  # verl's copy
    td = list_of_dict_to_tensordict([field, pad])
    engine = make_engine(MEM1FSDPEngineWithLMHead, training_model, "dense")
    model_output = run_engine(engine, td, remove_padding=True, entropy=False)
    log_probs = response_from_nested(model_output["log_probs"], td["response_mask"])
    check_mem1_sample(log_probs[0], output, reference_logprobs(training_model, [record])[0][0])
    assert torch.isfinite(model_output["log_probs"].values()).all()

    pad["loss_mask"] = pad["response_mask"] = torch.ones_like(pad["response_mask"])  # now it would be trained on
    with pytest.raises(ValueError, match="MEM1 segment ids .* for a sequence of 128 tokens"):
        run_engine(engine, list_of_dict_to_tensordict([field, pad]), remove_padding=True, entropy=False)


def test_no_optimizer_step_when_every_gradient_is_zero():
    """verl's own optimizer_step (clipping, then AdamW) runs; with all-zero gradients the MEM1 engine leaves the
    weights where they are, where the stock engine lets Adam's momentum and weight decay move them."""
    from types import SimpleNamespace

    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    def engine(cls):
        torch.manual_seed(0)
        module = torch.nn.Linear(4, 3)
        e = object.__new__(cls)
        e.module, e.optimizer_config, e._qat_enabled = module, SimpleNamespace(clip_grad=1.0), False
        e.optimizer = torch.optim.AdamW(module.parameters(), lr=0.1, weight_decay=0.01)
        e.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(e.optimizer, lambda _: 1.0)  # wraps optimizer.step
        return e

    def step(e, scale: float) -> float:
        e.optimizer.zero_grad()
        (scale * e.module(torch.ones(2, 4)).sum()).backward()
        return e.optimizer_step()

    moved = {}
    for cls in (MEM1FSDPEngineWithLMHead, FSDPEngineWithLMHead):
        e = engine(cls)
        assert step(e, 1.0) > 0  # a real step first: Adam now has momentum
        before = [p.detach().clone() for p in e.module.parameters()]
        wrapped_step = vars(e.optimizer)["step"]
        assert step(e, 0.0) == 0.0  # a batch whose advantages are all zero: every gradient is exactly 0
        moved[cls] = max(float((p - b).abs().max()) for p, b in zip(e.module.parameters(), before, strict=True))
        assert vars(e.optimizer)["step"] is wrapped_step  # the scheduler's wrapper is back
        assert step(e, 1.0) > 0 and e.optimizer.state[e.module.weight]["step"] >= 2
    assert moved[MEM1FSDPEngineWithLMHead] == 0.0
    assert moved[FSDPEngineWithLMHead] > 1e-3  # the stock step would have moved them


def test_the_backend_follows_the_device_verl_computes_on(training_model, monkeypatch):
    """Issue 23, finding 6: verl keeps a forward-only engine's parameters on the host (CPU offload) and moves each
    micro-batch to the accelerator; the backend is chosen for that device, not the parameters' (which made the
    reference policy always run the slow ``segmented`` backend on GPUs)."""
    import verl.utils.device as verl_device

    from verl_mem1.training import attention
    from verl_mem1.training.attention import attention_backend

    monkeypatch.setattr(attention, "flash_varlen_implementation", lambda: "flash_attn")  # as on a GPU node
    assert next(training_model.parameters()).device.type == "cpu"  # as an offloaded engine's are
    for device in ("cuda", "cpu"):
        monkeypatch.setattr(verl_device, "get_device_name", lambda device=device: device)
        engine = make_engine(MEM1FSDPEngineWithLMHead, training_model, None)
        with torch.no_grad():  # forward-only, as the reference computes
            assert engine._mem1_backend() == attention_backend("auto", device)
    assert attention_backend("auto", "cuda") != "segmented"


def test_one_engine_runs_one_mem1_attention(training_model):
    """``mem1.attention`` travels inside every sample (the engine has no other way to read the recipe): the first one
    decides, and a sample naming another fails instead of running under the first one's backend."""
    engine = make_engine(MEM1FSDPEngineWithLMHead, training_model, None)
    assert engine._mem1_backend("dense") == "dense"
    assert engine._mem1_backend("dense") == "dense" and engine._mem1_backend(None) == "dense"
    with pytest.raises(ValueError, match="mem1.attention='segmented'.*'dense'"):
        engine._mem1_backend("segmented")
