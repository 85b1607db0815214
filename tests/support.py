"""What several test modules share: independent re-computations the tests compare project code against (plain
transformers only), a scripted policy, a health poll, stand-ins for verl's rollout server client, and verl's console
metrics read back."""

from __future__ import annotations

import re
import subprocess
import time
from typing import TYPE_CHECKING, Any

import httpx
import torch

from verl_mem1.rollout.backends.base import Generation, SamplingConfig

if TYPE_CHECKING:
    from verl.workers.rollout.replica import TokenOutput


LLM_MODEL_NAME = "tiny-qwen"  # the model name the OpenAI-compatible test server answers to
LLM_PROMPT = "The capital of France is"


def recompute_logprobs(model, context: list[int], generated: list[int], temperature: float) -> list[float]:
    """Log-probs of ``generated`` after ``context`` from one unpadded, uncached forward pass (the LM head only at the
    positions that predict them: a 151k-token vocabulary over a whole context dominates the cost otherwise)."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([list(context) + list(generated)]), logits_to_keep=len(generated) + 1)
    logp = torch.log_softmax(out.logits[0, :-1].float() / (temperature if temperature > 0 else 1.0), dim=-1)
    return [float(logp[j, t]) for j, t in enumerate(generated)]


class ScriptedBackend:
    """Replays given turn texts, scoring them with the real tiny model (a stand-in for a trained policy)."""

    def __init__(self, model, tokenizer, texts: list[str]):
        self.model, self.tokenizer, self.texts = model, tokenizer, list(texts)
        self.contexts: list[list[int]] = []

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        self.contexts.append(list(prompt_ids))
        ids = self.tokenizer.encode(self.texts.pop(0), add_special_tokens=False)
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([prompt_ids + ids]), logits_to_keep=len(ids) + 1).logits[0, :-1]
        logp = torch.log_softmax(logits / sampling.temperature, dim=-1)
        lps = [float(logp[j, t]) for j, t in enumerate(ids)]
        return Generation(ids, lps, "stop")


def wait_until_healthy(proc: subprocess.Popen, url: str, timeout_s: float = 60.0) -> dict:
    """Poll ``url/health`` until it answers 200 (its JSON is returned); fail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "server exited"
        try:
            response = httpx.get(f"{url}/health", timeout=1.0)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.1)


def vllm_replica_params(sampling_params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """What verl's ``vLLMHttpServer.generate`` does to them before ``SamplingParams(max_tokens=..., **params)``."""
    params = dict(sampling_params)
    max_tokens = params.pop("max_tokens")
    params["logprobs"] = 0 if params.pop("logprobs", False) else None
    params.setdefault("repetition_penalty", 1.0)
    params.setdefault("ignore_eos", False)
    return max_tokens, params


class FakeVllmReplica:
    """A rollout replica: verl's vLLM param handling, decoding with ``HFLocalBackend`` (vLLM's semantics)."""

    def __init__(self, backend, max_model_len: int | None = None):
        self.backend = backend
        self.max_model_len = max_model_len  # verl's server caps max_tokens at max_model_len - len(prompt_ids)
        self.request_ids: list[str] = []

    async def generate(self, prompt_ids, sampling_params, request_id, image_data=None, video_data=None, **kwargs):
        from verl.workers.rollout.replica import TokenOutput  # importing verl takes seconds: only when used

        self.request_ids.append(request_id)
        max_tokens, params = vllm_replica_params(sampling_params)
        if self.max_model_len is not None:
            max_tokens = max(1, min(max_tokens, self.max_model_len - len(prompt_ids)))
        assert params["repetition_penalty"] == 1.0 and not params["ignore_eos"]
        top_k = params.get("top_k", -1)
        sampling = SamplingConfig(
            max_new_tokens=max_tokens,
            temperature=params.get("temperature", 1.0),
            top_p=params.get("top_p", 1.0),
            top_k=-1 if top_k in (0, -1) else top_k,
            stop=tuple(params.get("stop") or ()),
        )
        gen = await self.backend.generate(list(prompt_ids), sampling)
        # vLLM keeps the tokens that completed a stop string when include_stop_str_in_output is set; the
        # backend always does: the adapter must ask for it.
        assert params.get("include_stop_str_in_output") is True
        log_probs = gen.logprobs if params["logprobs"] is not None else None
        stop_reason = "completed"  # verl's vLLM server: for vLLM's "stop" and "length" alike
        return TokenOutput(token_ids=gen.token_ids, log_probs=log_probs, stop_reason=stop_reason, extra_fields={})


class FakeServerClient:
    """Stands in for verl's ``LLMServerClient`` (``agent_loop.server_manager``); same ``generate`` signature."""

    def __init__(self, replica: FakeVllmReplica):
        self.replica = replica
        self.calls: list[tuple[str, list[int], dict]] = []
        self.outputs: list[TokenOutput] = []

    async def generate(
        self,
        request_id,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data=None,
        video_data=None,
        audio_data=None,
        mm_processor_kwargs=None,
        **kwargs: Any,
    ) -> TokenOutput:
        self.calls.append((request_id, list(prompt_ids), dict(sampling_params)))
        output = await self.replica.generate(prompt_ids, dict(sampling_params), request_id=request_id)
        self.outputs.append(output)
        return output


STEP_LINE = re.compile(r"step:(\d+) - (.*)$")


def metrics_by_step(log: str) -> dict[int, dict[str, float]]:
    """verl's console logger lines (``step:N - key:value - ...``) as numbers per step."""
    steps: dict[int, dict[str, float]] = {}
    for line in log.splitlines():
        match = STEP_LINE.search(line)
        if not match:
            continue
        values = {}
        for item in match.group(2).split(" - "):
            key, _, value = item.partition(":")
            number = re.sub(r"^np\.\w+\((.*)\)$", r"\1", value.strip())
            try:
                values[key.strip()] = float(number)
            except ValueError:
                continue
        steps.setdefault(int(match.group(1)), {}).update(values)  # the legacy trainer logs a step over two lines
    return steps
