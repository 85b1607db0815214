"""OpenAI-compatible completions endpoint (``vllm serve``, SGLang, ``mem1 serve llm``) as a backend.

The prompt is sent as token ids and the server must return the sampled token ids (vLLM:
``return_token_ids`` or ``return_tokens_as_token_ids``), so nothing is re-tokenized. Log-probs are what the
server reports: vLLM reports raw log-probs by default (before temperature); run it with
``--logprobs-mode processed_logprobs`` (after temperature) or sample at temperature 1 when you need the
sampling distribution's log-probs exactly.
"""

from __future__ import annotations

import httpx

from verl_mem1.rollout.backends.base import Generation, SamplingConfig


class BackendError(RuntimeError):
    """The server answered something the episode loop cannot use."""


def _parse_token(token: str) -> int:
    if not token.startswith("token_id:"):
        raise BackendError(
            f"server returned token text {token!r} instead of token ids; "
            "enable return_tokens_as_token_ids (vLLM) so contexts stay token-exact"
        )
    return int(token.split(":", 1)[1])


def served_model_name(base_url: str, *, timeout_s: float = 30.0) -> str:
    """The first model a server lists at ``GET /v1/models`` (what ``vllm serve NAME`` serves)."""
    base = base_url.rstrip("/")
    url = base + ("/models" if base.endswith("/v1") else "/v1/models")
    try:
        response = httpx.get(url, timeout=timeout_s)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise BackendError(f"could not read the served model's name from {url}: {exc!r}") from exc


class OpenAICompletionsBackend:
    """Call ``POST {base_url}/v1/completions`` with token-id prompts."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        eos_token_ids: set[int] | None = None,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        self.endpoint = base + ("/completions" if base.endswith("/v1") else "/v1/completions")
        self.model = model
        self.eos_token_ids = eos_token_ids or set()
        from verl_mem1.rollout.environment import auth_headers

        # the given key, else $MEM1_API_KEY (what `mem1 serve llm --api-key` requires)
        headers = auth_headers(api_key)
        self._client = client or httpx.AsyncClient(timeout=timeout_s, headers=headers)

    def request_body(self, prompt_ids: list[int], sampling: SamplingConfig) -> dict:
        body = {
            "model": self.model,
            "prompt": list(prompt_ids),
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "logprobs": 0,  # the sampled token's log-prob only
            "stop": list(sampling.stop),
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
        }
        if sampling.top_k > 0:
            body["top_k"] = sampling.top_k
        return body

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        try:
            response = await self._client.post(self.endpoint, json=self.request_body(prompt_ids, sampling))
        except httpx.HTTPError as exc:
            raise BackendError(f"LLM server unreachable at {self.endpoint}: {exc!r}") from exc
        if response.status_code != 200:
            raise BackendError(f"LLM server answered {response.status_code}: {response.text[:300]}")
        try:
            choice = response.json()["choices"][0]
            logprobs = choice["logprobs"]
            token_logprobs = [float(x) for x in logprobs["token_logprobs"]]
            token_ids = choice.get("token_ids")
            if token_ids is None:
                token_ids = [_parse_token(t) for t in logprobs["tokens"]]
            token_ids = [int(t) for t in token_ids]
            reason = choice.get("finish_reason")
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise BackendError(f"malformed completions response: {response.text[:300]}") from exc
        if reason == "length":
            finish = "length"
        elif token_ids and token_ids[-1] in self.eos_token_ids:
            finish = "eos"
        else:
            finish = "stop"
        return Generation(token_ids=token_ids, logprobs=token_logprobs, finish_reason=finish)

    async def aclose(self) -> None:
        await self._client.aclose()
