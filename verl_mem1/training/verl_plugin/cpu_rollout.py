"""A rollout backend for verl without vLLM: transformers' generation behind verl's replica/server interface.

verl's agent loops reach their LLM through a ``RolloutReplica`` (one inference server per replica, a Ray actor whose
``generate`` returns a ``TokenOutput``) and receive new weights through a ``BaseRollout`` "server adapter" living in
the training worker. vLLM fills both roles on GPUs; on a CPU (CI, laptops) ``rollout.name=mem1_hf`` fills them with
the project's batched Hugging Face backend (``rollout/backends/hf_local.py``), so verl's unmodified trainer, agent-loop
manager, load balancer and weight sync run end to end:

- ``HFRolloutReplica.launch_servers`` starts one ``HFRolloutServer`` actor per replica (hybrid mode, the trainer's
  default), named after the replica so the training workers find it;
- ``HFRolloutServer.generate`` takes verl's vLLM-style ``sampling_params`` (``max_tokens``, ``temperature``,
  ``top_p``, ``top_k``, ``stop``) and returns the sampled ids with their log-probs, ``log_softmax(logits / T)`` in
  fp32: what verl's actor recomputes, so ``training/rollout_probs_diff`` measures the MEM1 layout, not two kernels;
- ``HFServerAdapter.update_weights`` (verl's "naive" checkpoint engine: after every optimizer step) sends the
  actor's full parameters to the server, which loads them into its model before the next rollout.

Selected by ``actor_rollout_ref.rollout.name=mem1_hf`` (``recipes/platform/cpu.yaml``); registered by the plug-in.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

import ray
import torch
from verl.workers.rollout import base as rollout_base
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

from verl_mem1.rollout.backends.base import SamplingConfig

logger = logging.getLogger(__name__)

ROLLOUT_NAME = "mem1_hf"


def server_actor_name(replica_rank: int) -> str:
    """The Ray actor name of a replica's server: how a training worker's adapter finds it to send weights."""
    return f"mem1_hf_rollout_server_{replica_rank}"


def sampling_from_params(params: dict[str, Any], *, max_tokens_left: int) -> SamplingConfig:
    """verl's (vLLM-style) ``sampling_params`` as the backend's ``SamplingConfig``; unknown keys are ignored as vLLM
    ignores what does not apply, but values the backend cannot honour fail clearly."""
    max_tokens = params.get("max_tokens", params.get("max_new_tokens"))
    max_tokens = max_tokens_left if max_tokens is None else min(int(max_tokens), max_tokens_left)
    if max_tokens < 1:
        raise ValueError(f"no room to generate: the prompt leaves {max_tokens_left} tokens of the context")
    stop = params.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    top_k = params.get("top_k", -1)
    top_k = -1 if top_k in (None, 0) else int(top_k)
    return SamplingConfig(
        max_new_tokens=max_tokens,
        temperature=float(params.get("temperature", 1.0)),
        top_p=float(params.get("top_p", 1.0)),
        top_k=top_k,
        stop=stop,
    )


def _field(config: Any, key: str) -> Any:
    """A key of a verl config that arrives as a dataclass or as a DictConfig (the replica gets both kinds)."""
    return (
        config.get(key)
        if hasattr(config, "get") and not hasattr(config, "__dataclass_fields__")
        else getattr(config, key, None)
    )


class HFRolloutServer:
    """One replica's inference server: a transformers model, batched across concurrent requests."""

    def __init__(self, config: Any, model_config: Any, replica_rank: int) -> None:
        from verl_mem1.rollout.backends.hf_local import HFLocalBackend

        path = _field(model_config, "local_path") or _field(model_config, "path")
        dtype = str(_field(config, "dtype") or "float32")
        self.backend = HFLocalBackend(
            path,
            dtype="float32" if dtype in ("float32", "fp32") else dtype,
            max_batch_size=int(_field(config, "max_num_seqs") or 16),
            seed=int(_field(config, "seed") or 0) + replica_rank,
        )
        self.max_model_len = int(
            _field(config, "max_model_len") or (_field(config, "prompt_length") + _field(config, "response_length"))
        )
        self.replica_rank = replica_rank
        self.global_steps: int | None = None
        self.weight_updates = 0

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Any = None,
        video_data: Any = None,
        **kwargs: Any,
    ) -> TokenOutput:
        if image_data or video_data:
            raise ValueError("the mem1_hf rollout serves text only")
        sampling = sampling_from_params(sampling_params, max_tokens_left=self.max_model_len - len(prompt_ids))
        generation = await self.backend.generate(list(prompt_ids), sampling)
        return TokenOutput(
            token_ids=generation.token_ids,
            log_probs=generation.logprobs,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    async def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        """Load the trainer's parameters (full tensors, Hugging Face names); returns how many were loaded."""
        model = self.backend.model
        own = set(model.state_dict())
        unexpected = sorted(set(state_dict) - own)
        if unexpected:
            raise ValueError(f"weights the rollout model does not have: {unexpected[:5]}")
        absent = sorted(name for name in own - set(state_dict) if not _is_tied(model, name))
        if absent:
            raise ValueError(f"the update left rollout weights unset: {absent[:5]}")
        with self.backend._model_lock:  # checked first: a refused update leaves the model as it was
            model.load_state_dict(state_dict, strict=False)
            self.backend.prefix_cache.clear()  # KV computed by the old weights
        self.global_steps = global_steps
        self.weight_updates += 1
        return len(state_dict)

    async def stats(self) -> dict[str, Any]:
        return {"weight_updates": self.weight_updates, "global_steps": self.global_steps}

    # verl's replica control calls: the prefix cache is the only KV to free; nothing to pause in a CPU process
    async def wake_up(self) -> None: ...

    async def sleep(self) -> None: ...

    async def clear_kv_cache(self) -> None:
        self.backend.clear_prefix_cache()

    async def release_kv_cache(self) -> None:
        self.backend.clear_prefix_cache()

    async def resume_kv_cache(self) -> None: ...

    async def abort_all_requests(self, reject_request: bool = False) -> dict[str, Any]:
        return {}

    async def resume_generation(self) -> None: ...

    async def start_profile(self, **kwargs: Any) -> None: ...

    async def stop_profile(self) -> None: ...


def _is_tied(model: torch.nn.Module, name: str) -> bool:
    """A parameter the model ties to another (``lm_head.weight`` with tied embeddings) needs no update of its own."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    names = tied.keys() if isinstance(tied, dict) else tied
    return name in names


class HFRolloutReplica(RolloutReplica):
    """verl's replica interface over one ``HFRolloutServer`` actor (CPU only)."""

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self) -> None:
        if self.world_size != 1:
            raise ValueError(
                f"the mem1_hf rollout runs one process per replica: set rollout tensor/data/pipeline parallel "
                f"sizes to 1 (world size {self.world_size})"
            )
        name = server_actor_name(self.replica_rank)
        server = (
            ray.remote(HFRolloutServer)
            .options(name=name, max_concurrency=self.max_concurrency, num_cpus=0)
            .remote(self.config, self.model_config, self.replica_rank)
        )
        await server.stats.remote()  # the model is loaded: fail here, not at the first request
        self.servers = [server]
        self._server_handle = server
        self._server_address = name  # no HTTP endpoint: verl's router only needs a unique key


class HFServerAdapter(BaseRollout):
    """The training worker's side of ``mem1_hf``: sends the actor's weights to its replica's server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.replica_rank = rank  # one process per replica (HFRolloutReplica checks)
        self.is_leader_rank = True
        self._server = None

    def _server_handle(self) -> Any:
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def update_weights(
        self, weights: Generator[tuple[str, torch.Tensor], None, None], wire_format: str = "named_tensors", **kwargs
    ) -> None:
        if wire_format != "named_tensors":
            raise ValueError(f"the mem1_hf rollout takes full named tensors, not {wire_format!r}")
        state_dict = {}
        for name, tensor in weights:
            if hasattr(tensor, "full_tensor"):  # a DTensor shard of FSDP2
                tensor = tensor.full_tensor()
            state_dict[name] = tensor.detach().to("cpu", copy=True)
        await self._server_handle().update_weights.remote(state_dict, kwargs.get("global_steps"))

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None


def register_rollout() -> None:
    """Make ``rollout.name=mem1_hf`` known to verl's replica registry and to its worker-side rollout registry (a
    module-level table in ``verl.workers.rollout.base``, which has no registration function in verl 0.9)."""
    RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: HFRolloutReplica)
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{__name__}.HFServerAdapter"


register_rollout()  # on import, as the engines register: the plug-in's hook on verl's replica module imports this
