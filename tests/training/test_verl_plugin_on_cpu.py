"""The verl plug-in on CPU: loading, recipes, the MEM1 agent loop and the MEM1 FSDP engine's input preparation.

No verl trainer runs here (it needs GPUs, vLLM and Ray). What runs is verl's own code around ours: its registries,
its Hydra config tree, its agent-loop instantiation, both of its agent-loop post-processing paths (the legacy
``AgentLoopWorker`` and the TransferQueue field layout), its padding helpers and its engine's
``forward_step``/``prepare_model_inputs``/``prepare_model_outputs`` on the tiny model (FSDP wrapping and
``torch.distributed`` are the parts left out). The acceptance check is DESIGN.md's: every generated token's
training log-prob equals the rollout's and the dense packed reference within 1e-4 (fp32).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support import FakeServerClient, FakeVllmReplica
from tests.training.records import make_record
from verl_mem1.training.verl_plugin import AGENT_NAME, PLUGIN_MODULE
from verl_mem1.training.verl_plugin.agent_loop import MEM1AgentLoop
from verl_mem1.training.verl_plugin.engine import (
    POSITION_KEY,
    SEGMENT_KEY,
    MEM1FSDPEngineWithLMHead,
    MEM1FSDPEngineWithValueHead,
)

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
TOL = 1e-4
TEMPERATURE = 0.7


def compose(name: str, overrides: list[str] | None = None):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        return hydra_compose(config_name=name, overrides=overrides or [])


# ----------------------------------------------------------------------------------------- loading, recipes


def test_plugin_loads_the_way_verl_loads_it():
    """A fresh interpreter where verl imports the plug-in itself (VERL_USE_EXTERNAL_MODULES, at ``import verl``
    — the same point its ``verl.plugins`` entry points load) finds our loop and engines in verl's registries."""
    code = (
        "import json, verl\n"
        "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry as r\n"
        "from verl.workers.engine import EngineRegistry as e\n"
        "print(json.dumps({'loop': r.get('mem1_agent'), 'engines': [f'{c.__module__}.{c.__name__}' for c in ("
        "e.get_engine_cls('language_model', 'fsdp'), e.get_engine_cls('language_model', 'fsdp2'),"
        "e.get_engine_cls('value_model', 'fsdp2'))]}))\n"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": PLUGIN_MODULE, "VERL_USE_EXTERNAL_PLUGINS": "none"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["loop"] == {"_target_": "verl_mem1.training.verl_plugin.agent_loop.MEM1AgentLoop"}
    engine = "verl_mem1.training.verl_plugin.engine.MEM1FSDPEngine"
    assert found["engines"] == [engine + "WithLMHead", engine + "WithLMHead", engine + "WithValueHead"]


def agent_loop_entries():
    """recipes/agent_loops.yaml as ``AgentLoopWorker.__init__`` reads it (``OmegaConf.load``)."""
    from omegaconf import OmegaConf

    return list(OmegaConf.load(RECIPES / "agent_loops.yaml"))


def test_entry_point_and_agent_loop_config_file():
    from importlib.metadata import entry_points

    import hydra
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.utils.import_utils import import_external_libs

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["verl.plugins"]
    assert table == {"mem1": PLUGIN_MODULE}
    import_external_libs(compose("qa").actor_rollout_ref.model.external_lib)  # what HFModelConfig does
    assert AGENT_NAME in _agent_loop_registry
    entries = agent_loop_entries()
    assert [e.name for e in entries] == [AGENT_NAME, "mem1_agent_full", "mem1_agent_per_turn"]
    for entry in entries:
        assert hydra.utils.get_class(entry._target_) is MEM1AgentLoop
    installed = [ep for ep in entry_points(group="verl.plugins") if ep.name == "mem1"]
    if installed:  # the package metadata is rebuilt by `pip install -e .` (make install)
        assert installed[0].value == PLUGIN_MODULE


def test_qa_recipe_composes_over_verls_ppo_trainer():
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    from verl_mem1.tasks import rewards

    cfg = compose("qa")
    OmegaConf.resolve(cfg)
    rollout = cfg.actor_rollout_ref.rollout
    assert rollout.agent.default_agent_loop == AGENT_NAME and rollout.agent.agent_loop_config_path.endswith(
        "agent_loops.yaml"
    )
    assert cfg.actor_rollout_ref.model.external_lib == PLUGIN_MODULE == cfg.critic.model.external_lib
    assert cfg.reward.custom_reward_function.path == "pkg://verl_mem1.tasks.rewards"
    assert get_custom_reward_fn(cfg).args[0] is rewards.compute_score
    assert cfg.algorithm.adv_estimator == "grpo" and rollout.n == 5 and rollout.calculate_log_probs
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen2.5-7B-Instruct"
    assert (rollout.prompt_length, rollout.response_length) == (4096, 8192)  # interpolated from data.*
    assert cfg.actor_rollout_ref.ref.strategy == "fsdp2" and cfg.actor_rollout_ref.model.use_remove_padding
    assert cfg.mem1.retriever_url == "http://127.0.0.1:8000" and cfg.mem1.layout == "packed"
    # verl's own checks (main_ppo runs them before starting Ray) and dataclasses accept the values
    with pytest.warns(UserWarning, match="Disabled critic"):
        use_critic = need_critic(cfg)
    assert not use_critic  # GRPO: no critic (switching to gae turns the recipe's critic section on)
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=use_critic)
    assert omega_conf_to_dataclass(rollout).agent.default_agent_loop == AGENT_NAME
    assert omega_conf_to_dataclass(cfg.actor_rollout_ref.actor).engine.strategy == "fsdp2"


def flat(d: dict, prefix: str = "") -> dict:
    """A nested config as {"a.b.c": value}."""
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_websearch_recipe_is_qa_with_another_environment():
    from omegaconf import OmegaConf

    qa = OmegaConf.to_container(compose("qa"), resolve=True)
    web = OmegaConf.to_container(compose("websearch"), resolve=True)

    qa, web = flat(qa), flat(web)
    differ = {k for k in qa.keys() | web.keys() if qa.get(k) != web.get(k)}
    assert differ == {
        "mem1.retriever_url",
        "mem1.retriever_timeout_s",
        "data.train_files",
        "data.val_files",
        "actor_rollout_ref.rollout.agent.num_workers",
        "trainer.experiment_name",
        "trainer.default_local_dir",
        "actor_rollout_ref.rollout.trace.experiment_name",  # interpolates trainer.experiment_name
    }
    assert web["mem1.retriever_url"] == "http://127.0.0.1:8002"


def test_webshop_recipe_is_qa_with_the_shop_as_environment():
    from omegaconf import OmegaConf

    from verl_mem1.config import Mem1Config

    qa = flat(OmegaConf.to_container(compose("qa"), resolve=True))
    shop = flat(OmegaConf.to_container(compose("webshop"), resolve=True))
    differ = {k for k in qa.keys() | shop.keys() if qa.get(k) != shop.get(k)}
    assert differ == {
        "mem1.env",
        "mem1.webshop_url",
        "mem1.max_turns",
        "mem1.max_observation_tokens",
        "data.train_files",
        "data.val_files",
        "data.max_response_length",
        "actor_rollout_ref.rollout.response_length",  # these two interpolate data.max_response_length
        "distillation.teacher_models.teacher_model.inference.response_length",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu",
        "trainer.experiment_name",
        "trainer.default_local_dir",
        "actor_rollout_ref.rollout.trace.experiment_name",
    }, differ
    mem1 = Mem1Config.from_trainer_config(compose("webshop"))
    assert mem1.env == "webshop" and mem1.webshop_url.endswith(":8003") and mem1.max_turns == 15
    with pytest.raises(ValueError, match="mem1.env=webshop needs in_loop"):
        Mem1Config.from_trainer_config(compose("webshop"), reward="verl")
    with pytest.raises(ValueError, match="does not fit"):
        Mem1Config.from_trainer_config(compose("webshop"), tags="paper")


# --------------------------------------------------------------------------------------------- agent loop


@pytest.fixture(scope="module")
def trainer_config(tiny_model_dir, retrieval_url):
    return compose(
        "qa",
        [
            f"actor_rollout_ref.model.path={tiny_model_dir}",
            f"mem1.retriever_url={retrieval_url}",
            "mem1.topk=1",
            "mem1.max_turns=3",
            "mem1.max_new_tokens=10",
            "mem1.max_observation_tokens=24",
            "data.max_prompt_length=1024",
            "data.max_response_length=512",
            f"actor_rollout_ref.rollout.temperature={TEMPERATURE}",
        ],
    )


@pytest.fixture(scope="module")
def rows(trainer_config, tiny_backend, tmp_path_factory):
    """Dataset rows exactly as verl's RLHFDataset serves them, from tasks written by ``mem1 compose``'s code."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from verl_mem1.tasks import compose_tasks, load_source, write_tasks_parquet

    items = load_source("hotpotqa-dev")[:4]
    path = write_tasks_parquet(
        compose_tasks([items], objectives=2, count=2, seed=0, agent_name=AGENT_NAME),
        tmp_path_factory.mktemp("tasks") / "train.parquet",
    )
    data = trainer_config.data.copy()
    data.filter_overlong_prompts = False
    dataset = RLHFDataset(data_files=[str(path)], tokenizer=tiny_backend.tokenizer, config=data)
    return [dataset[i] for i in range(len(dataset))]


@pytest.fixture(scope="module")
def server(tiny_backend):
    from verl_mem1.rollout.backends.hf_local import HFLocalBackend

    backend = HFLocalBackend(model=tiny_backend.model, tokenizer=tiny_backend.tokenizer, max_batch_size=8, seed=0)
    return FakeServerClient(FakeVllmReplica(backend))


def make_loop(trainer_config, server, tokenizer, entry=None, **constructor_kwargs):
    """Instantiate the loop exactly as ``AgentLoopWorker._run_agent_loop`` does (registry entry + hydra)."""
    import hydra
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry
    from verl.utils.dataset.rl_dataset import RLHFDataset

    return hydra.utils.instantiate(
        config=entry if entry is not None else {**_agent_loop_registry[AGENT_NAME], **constructor_kwargs},
        trainer_config=DictConfigWrap(config=trainer_config),
        server_manager=server,
        tokenizer=tokenizer,
        processor=None,
        hf_model_type="qwen2",
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(trainer_config.data),
        tools=ToolListWrap([]),
    )


def verl_sampling_params(config) -> dict:
    rollout = config.actor_rollout_ref.rollout  # what AgentLoopWorker.generate_sequences passes to run()
    return dict(
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        top_k=rollout.top_k,
        repetition_penalty=1.0,
        logprobs=rollout.calculate_log_probs,
    )


def row_kwargs(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("agent_name", "dummy_tensor")}


@pytest.fixture(scope="module")
def episodes(trainer_config, server, tiny_backend, rows):
    """([record], [packed output]) of one MEM1 episode (row 0), played through the agent loop's own steps."""
    from verl_mem1.tasks.rewards import compute_score
    from verl_mem1.training.verl_plugin.agent_loop import trajectory_text

    loop = make_loop(trainer_config, server, tiny_backend.tokenizer)

    async def go():
        out = []
        for row in rows[:1]:
            record = await loop.play(loop.task_from_row(row_kwargs(row)), verl_sampling_params(trainer_config))
            reward, info = await loop.score(record, row_kwargs(row))
            out.append((record, loop.to_outputs(record, reward, info)))
        return out

    played = asyncio.run(go())
    assert all(len(r.turns) >= 2 for r, _ in played), "episodes must span several turns"
    for (record, output), row in zip(played, rows[:1], strict=True):  # in-loop reward = our compute_score on the text
        truth = row["reward_model"]["ground_truth"]
        text = trajectory_text(record, tiny_backend.tokenizer)
        assert output.reward_score == compute_score(row["data_source"], text, truth, row["extra_info"])["score"]
    return [r for r, _ in played], [o for _, o in played]


def _segments(output):
    seg = output.extra_fields[SEGMENT_KEY]
    p = len(output.prompt_ids)
    ids = output.prompt_ids + output.response_ids
    runs, start = [], p
    for i in range(p + 1, len(ids) + 1):
        if i == len(ids) or seg[i] != seg[i - 1]:
            runs.append((start, i))
            start = i
    return ids, runs


def test_agent_loop_run_returns_the_packed_episode(trainer_config, server, tiny_backend, rows, recompute_logprobs):
    from verl.experimental.agent_loop.agent_loop import AgentLoopOutput

    loop = make_loop(trainer_config, server, tiny_backend.tokenizer)
    calls = len(server.calls)
    output = asyncio.run(loop.run(verl_sampling_params(trainer_config), **row_kwargs(rows[1])))
    assert isinstance(output, AgentLoopOutput) and output.num_turns == len(server.calls) - calls >= 2
    assert server.calls[-1][2]["temperature"] == TEMPERATURE and server.calls[-1][2]["logprobs"] is True
    p, n = len(output.prompt_ids), len(output.response_ids)
    assert server.calls[calls][1] == output.prompt_ids  # turn 1 sees exactly the prompt
    assert len(output.response_mask) == len(output.response_logprobs) == n
    pos, seg = output.extra_fields[POSITION_KEY], output.extra_fields[SEGMENT_KEY]
    assert len(pos) == len(seg) == p + n and seg[:p] == [0] * p and pos[:p] == list(range(p))
    ids, runs = _segments(output)
    assert len(runs) == output.num_turns and output.extra_fields["mem1_turns"] == output.num_turns
    generated = 0
    for t, (a, b) in enumerate(runs, start=1):
        assert seg[a:b] == [t] * (b - a) and pos[a:b] == list(range(p, p + b - a))  # positions restart at P
        mask = output.response_mask[a - p : b - p]
        k = mask.index(1)  # context copy first (loss 0), then the generated tokens (loss 1)
        assert mask == [0] * k + [1] * (b - a - k)
        context, gen = ids[:p] + ids[a : a + k], ids[a + k : b]
        assert server.calls[calls + t - 1][1] == context  # the server saw exactly this context that turn
        expected = recompute_logprobs(tiny_backend.model, context, gen, TEMPERATURE)
        got = output.response_logprobs[a + k - p : b - p]
        assert max(abs(x - y) for x, y in zip(got, expected, strict=True)) <= TOL
        generated += len(gen)
    assert sum(output.response_mask) == generated
    # reward: computed in the loop by the configured reward function, on the episode's text
    assert output.reward_score == output.extra_fields["reward_extra_info"]["score"]
    assert isinstance(output.reward_score, float) and output.metrics.generate_sequences > 0
    assert output.extra_fields["mem1_peak_tokens"] > p and output.extra_fields["mem1_truncated_tokens"] == 0


def test_per_turn_layout_returns_one_sample_per_turn(trainer_config, server, tiny_backend, episodes, rows):
    from hydra.errors import InstantiationException
    from omegaconf import OmegaConf

    records, _ = episodes
    loop = make_loop(trainer_config, server, tiny_backend.tokenizer, layout="per_turn")
    outputs = loop.to_outputs(records[0], 1.0, {"score": 1.0})
    assert len(outputs) == len(records[0].turns)
    for out, turn in zip(outputs, records[0].turns, strict=True):
        assert out.prompt_ids == turn.context_ids and out.response_ids == turn.generated_ids
        assert out.response_logprobs == turn.logprobs and out.response_mask == [1] * len(turn.generated_ids)
        assert out.reward_score == 1.0 and POSITION_KEY not in out.extra_fields
    # the entries of agent_loops.yaml, as AgentLoopWorker registers them (name included) and instantiates them
    loops = {e.name: make_loop(trainer_config, server, tiny_backend.tokenizer, entry=e) for e in agent_loop_entries()}
    assert {n: (lp.mem1.context, lp.mem1.layout) for n, lp in loops.items()} == {
        AGENT_NAME: ("mem1", "packed"),
        "mem1_agent_full": ("full", "packed"),
        "mem1_agent_per_turn": ("mem1", "per_turn"),
    }
    legacy = OmegaConf.merge(trainer_config, {"trainer": {"use_v1": False}})
    with pytest.raises(InstantiationException, match="use_v1"):  # hydra wraps the loop's ValueError
        make_loop(legacy, server, tiny_backend.tokenizer, layout="per_turn")
    with pytest.raises(InstantiationException, match="unknown MEM1 agent loop arguments"):
        make_loop(trainer_config, server, tiny_backend.tokenizer, contxt="full")  # a typo in agent_loops.yaml
    shared = OmegaConf.merge(trainer_config, {})  # the mem1 section may carry the CPU trainer's keys too
    OmegaConf.set_struct(shared, False)
    shared.mem1.objectives, shared.mem1.max_new_tokens = 1, None
    loop = make_loop(shared, server, tiny_backend.tokenizer)
    assert loop.episode_config(loop.task_from_row(row_kwargs(rows[0])), {}).max_new_tokens == loop.response_length


# ------------------------------------------------------------------------------------------------- engine


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


def tq_batch(outputs, rows):
    """verl's v1 path: the per-sample fields ``AgentLoopWorkerTQ._agent_loop_postprocess`` stores in TransferQueue."""
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    fields = []
    for output, row in zip(outputs, rows, strict=True):
        field = output.as_dict()
        field.update({k: v for k, v in row_kwargs(row).items() if k in ("data_source", "uid", "index")})
        field["loss_mask"] = field["response_mask"]
        field["input_ids"] = torch.cat([field["prompts"], field["responses"]])
        field["position_ids"] = torch.arange(field["input_ids"].numel())  # what _compute_position_ids gives
        field.pop("multi_modal_data", None)
        fields.append(field)
    return list_of_dict_to_tensordict(fields)


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
    from verl_mem1.training.packing import pack_episode

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


def test_engine_reads_each_segments_first_token_at_its_predictor(
    tiny_backend, training_model, tiny_model_dir, cpu_device
):
    """A segment with no context copy is predicted by the prompt's last position, not by the previous segment's
    last token (where verl reads it): log-probs, entropies and critic values come from the right row."""
    from transformers import AutoModelForTokenClassification

    from verl_mem1.training.forward import packed_logprobs_and_entropy, packed_values
    from verl_mem1.training.packing import pack_episode
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


def test_agent_loop_plays_webshop_rows_and_takes_the_shops_reward(
    trainer_config, server, tiny_backend, webshop_url, tmp_path
):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from env_servers.webshop.data import load_catalog
    from verl_mem1.tasks import write_tasks_parquet
    from verl_mem1.tasks.webshop import webshop_rows

    goals = load_catalog().goals
    path = write_tasks_parquet(
        webshop_rows(goals, range(3, 5), split="train", agent_name=AGENT_NAME), tmp_path / "w.parquet"
    )
    data = trainer_config.data.copy()
    data.filter_overlong_prompts = False
    dataset = RLHFDataset(data_files=[str(path)], tokenizer=tiny_backend.tokenizer, config=data)
    row = row_kwargs(dataset[0])
    loop = make_loop(trainer_config, server, tiny_backend.tokenizer, env="webshop", webshop_url=webshop_url)
    calls = len(server.calls)

    async def go():
        record = await loop.play(loop.task_from_row(row), verl_sampling_params(trainer_config))
        return record, await loop.score(record, row)

    record, (reward, info) = asyncio.run(go())
    assert record.tag_set == "webshop" and record.data_source == "webshop" and record.ground_truth == []
    assert goals[3]["instruction_text"] in tiny_backend.tokenizer.decode(record.prompt_ids)
    assert len(record.turns) == len(server.calls) - calls == 3  # mem1.max_turns=3 in this config
    assert record.termination == "max_turns" and record.reward == reward == 0.0  # a random model buys nothing
    assert info == {"score": 0.0, "webshop_success": 0.0}
    output = loop.to_outputs(record, reward, info)
    assert output.reward_score == 0.0 and output.extra_fields["mem1_turns"] == 3
