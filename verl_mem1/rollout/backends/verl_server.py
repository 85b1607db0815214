"""verl's own rollout server client (``LLMServerClient.generate``) as a backend, for training on GPU clusters.

Inside a verl agent loop the server manager routes token-id prompts to vLLM/SGLang replicas and returns a
``TokenOutput`` with token ids and log-probs; this adapter gives it the episode loop's interface.
"""

from __future__ import annotations

import uuid
from typing import Any

from verl_mem1.rollout.backends.base import Generation, SamplingConfig


class VerlServerBackend:
    """Wrap a verl ``LLMServerClient`` (``agent_loop.server_manager``)."""

    def __init__(
        self,
        server_manager: Any,
        *,
        eos_token_ids: set[int] | None = None,
        request_id: str | None = None,
        tokenizer: Any = None,
    ):
        self.server_manager = server_manager
        self.eos_token_ids = eos_token_ids or set()
        # decodes a generation's last tokens to tell a stop string from a length cap: verl's vLLM server reports both
        # as "completed", and caps max_tokens at the context left, so a short generation need not have stopped
        self.tokenizer = tokenizer
        self.request_id = request_id or uuid.uuid4().hex  # sticky: one episode stays on one replica (prefix cache)
        # the policy versions (verl's global step of the weights) the episode's generations came from: verl reports
        # how off-policy each trajectory is from their range (min_global_steps / max_global_steps)
        self.min_global_steps: int | None = None
        self.max_global_steps: int | None = None

    @staticmethod
    def sampling_params(sampling: SamplingConfig) -> dict[str, Any]:
        """vLLM/SGLang sampling params as verl forwards them to the server."""
        return {
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "stop": list(sampling.stop),
            "include_stop_str_in_output": True,
            "logprobs": True,
        }

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        output = await self.server_manager.generate(
            self.request_id, prompt_ids=list(prompt_ids), sampling_params=self.sampling_params(sampling)
        )
        if output.stop_reason == "aborted":
            raise RuntimeError("verl rollout server aborted the request (generation paused); retry the episode")
        self._record_version(output.extra_fields or {})
        token_ids = [int(t) for t in output.token_ids]
        if output.log_probs is None:
            raise RuntimeError("verl rollout server returned no log-probs; set rollout.calculate_log_probs=True")
        finish = self._finish_reason(token_ids, output.stop_reason, sampling)
        return Generation(token_ids=token_ids, logprobs=[float(x) for x in output.log_probs], finish_reason=finish)

    def _finish_reason(self, token_ids: list[int], stop_reason: str | None, sampling: SamplingConfig) -> str:
        if token_ids and token_ids[-1] in self.eos_token_ids:
            return "eos"
        if stop_reason == "length" or len(token_ids) >= sampling.max_new_tokens or not sampling.stop:
            return "length"  # nothing else ends a generation without EOS or a stop string
        if self.tokenizer is None:
            return "stop"  # cannot tell a stop string from the replica's context cap without decoding
        # a stop string ends inside the last token, and each token is at least one character
        tail = self.tokenizer.decode(token_ids[-max(len(s) for s in sampling.stop) :])
        return "stop" if any(s in tail for s in sampling.stop) else "length"

    def _record_version(self, extra_fields: dict[str, Any]) -> None:
        low, high = extra_fields.get("min_global_steps"), extra_fields.get("max_global_steps")
        if low is not None:
            self.min_global_steps = low if self.min_global_steps is None else min(self.min_global_steps, low)
        if high is not None:
            self.max_global_steps = high if self.max_global_steps is None else max(self.max_global_steps, high)

    def weight_versions(self) -> dict[str, int | None]:
        """``min_global_steps`` / ``max_global_steps`` over the calls so far, as verl's agent loops report them."""
        return {"min_global_steps": self.min_global_steps, "max_global_steps": self.max_global_steps}
