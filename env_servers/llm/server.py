"""An OpenAI-compatible completions server over :class:`HFLocalBackend`: ``mem1 serve llm``.

Serves any local Hugging Face causal LM the way ``vllm serve`` does for the parts MEM1 rollouts use, so
:class:`~verl_mem1.rollout.backends.openai_http.OpenAICompletionsBackend` works the same against this server
on CPU and against vLLM on GPUs. Concurrent requests are batched by the backend (one decode batch of up to
``max_batch_size`` sequences).

Endpoints: ``POST /v1/completions``, ``GET /v1/models``, ``GET /health``.

``POST /v1/completions`` takes one prompt (a string, tokenized without special tokens, or a list of token
ids; a list holding exactly one prompt is accepted too) and vLLM's extensions ``return_tokens_as_token_ids``,
``return_token_ids``, ``include_stop_str_in_output`` and ``skip_special_tokens``. Differences from vLLM:

* Log-probs are the backend's: ``log_softmax(logits / temperature)`` of the sampled token before top-p/top-k
  truncation (at temperature 1 when ``temperature == 0``), i.e. the sampling distribution PPO needs. vLLM
  reports raw (temperature-1) log-probs by default. ``top_logprobs`` is always ``null``.
* As in vLLM the returned tokens (``token_ids``, ``logprobs.tokens``) always include every token up to and
  including the one that completed a stop string, since a token cannot be split; ``include_stop_str_in_output``
  only decides whether ``text`` ends before or after the stop string. ``stop_reason`` names the stop string
  that ended generation (``null`` for EOS and length).
* ``finish_reason`` is ``"stop"`` for EOS and stop strings (OpenAI convention) and ``"length"`` when
  ``max_tokens`` or the model's context ran out. ``max_tokens`` is silently capped by the context left.
* ``seed`` is accepted and ignored (rows of one decode batch share the backend's generator). ``n``,
  ``best_of`` > 1, ``stream``, ``echo``, ``stop_token_ids`` and non-default penalties are rejected with 400.
* ``text_offset`` follows vLLM: cumulative lengths of the per-token strings.

Errors come back as ``{"error": {"message", "type", "param", "code"}}``: 400 for bad requests (bad JSON,
wrong types, empty or too-long prompt, unsupported options), 404 for an unknown model name (as vLLM), 500
when generation itself fails; the server keeps serving.

The ``mem1 serve llm`` subcommand is :mod:`env_servers.llm.cli`. fastapi, pydantic, torch and transformers
are imported when an app is built, not at module level.
"""

import functools
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from env_servers.llm import DEFAULT_PORT

if TYPE_CHECKING:
    import fastapi

    from verl_mem1.rollout.backends.hf_local import HFLocalBackend

logger = logging.getLogger(__name__)

# Options vLLM supports but this server does not: a request may only send them with these values.
_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "n": 1,
    "best_of": None,
    "stream": False,
    "echo": False,
    "stop_token_ids": None,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
}


class _RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


@functools.lru_cache(maxsize=1)
def _completion_request_model():
    """The request schema (built lazily so importing this module does not import pydantic)."""
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

    class CompletionRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")  # like vLLM: unknown fields are ignored

        model: str
        prompt: str | list[int]
        max_tokens: int | None = Field(16, ge=1)
        temperature: float | None = Field(1.0, ge=0)
        top_p: float | None = Field(1.0, gt=0, le=1)
        top_k: int | None = Field(-1, ge=-1)
        stop: str | list[str] | None = Field(None, validate_default=True)
        logprobs: int | None = Field(None, ge=0)
        include_stop_str_in_output: StrictBool = False
        skip_special_tokens: StrictBool = True
        return_tokens_as_token_ids: StrictBool = False
        return_token_ids: StrictBool = False
        seed: int | None = None
        n: int | None = 1
        best_of: int | None = None
        stream: bool | None = False
        echo: bool | None = False
        stop_token_ids: list[int] | None = None
        presence_penalty: float | None = 0.0
        frequency_penalty: float | None = 0.0
        repetition_penalty: float | None = 1.0

        @field_validator("prompt", mode="before")
        @classmethod
        def _one_prompt(cls, value: Any) -> Any:
            if isinstance(value, list):
                if value and all(isinstance(p, (list, str)) for p in value):
                    if len(value) > 1:
                        raise ValueError(
                            f"batched prompts not supported: got {len(value)} prompts; send one prompt per request"
                        )
                    value = value[0]  # a batch of one
                if isinstance(value, list) and not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
                    raise ValueError("prompt must be a string or a list of integer token ids")
            elif not isinstance(value, str):
                raise ValueError(f"prompt must be a string or a list of integer token ids, got {type(value).__name__}")
            if len(value) == 0:
                raise ValueError("prompt is empty")
            return value

        @field_validator("stop", mode="after")
        @classmethod
        def _stop_strings(cls, value: str | list[str] | None) -> list[str]:
            stops = [value] if isinstance(value, str) else list(value or [])
            if any(s == "" for s in stops):
                raise ValueError("stop strings must be non-empty")
            return stops

    return CompletionRequest


def _format_validation_error(exc) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in err.get("loc", ()))
        msg = err.get("msg", "invalid")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid request: " + "; ".join(parts)


def _error_response(status: int, message: str, kind: str = "BadRequestError", param: str | None = None):
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def create_app(backend: "HFLocalBackend", model_name: str) -> "fastapi.FastAPI":
    """A FastAPI app serving ``backend`` under the model name ``model_name``."""
    from fastapi import FastAPI, Request
    from pydantic import ValidationError

    from verl_mem1.rollout.backends.base import SamplingConfig

    request_model = _completion_request_model()
    tokenizer = backend.tokenizer
    embeddings = backend.model.get_input_embeddings()
    vocab_size = embeddings.num_embeddings if embeddings is not None else len(tokenizer)
    max_positions = backend.max_positions
    created = int(time.time())

    app = FastAPI(title=f"mem1 serve llm: {model_name}", description="OpenAI-compatible completions over a HF model")
    app.state.backend = backend
    app.state.model_name = model_name

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "mem1", "root": model_name}
        if max_positions is not None:
            card["max_model_len"] = max_positions
        return {"object": "list", "data": [card]}

    def parse(raw: bytes):
        try:
            req = request_model.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0].get("loc") or (None,)
            param = first[0] if isinstance(first[0], str) else None
            raise _RequestError(400, _format_validation_error(exc), param=param) from exc
        if req.model != model_name:
            raise _RequestError(404, f"The model `{req.model}` does not exist.", "NotFoundError", "model")
        for name, default in _UNSUPPORTED_DEFAULTS.items():
            value = getattr(req, name)
            if value is not None and value != default and not (name == "best_of" and value == 1):
                raise _RequestError(
                    400, f"{name}={value!r} is not supported by this server (only {default!r})", param=name
                )
        if isinstance(req.prompt, str):
            prompt_ids = tokenizer.encode(req.prompt, add_special_tokens=False)
            if not prompt_ids:
                raise _RequestError(400, "prompt is empty after tokenization", param="prompt")
        else:
            prompt_ids = list(req.prompt)
            bad = [t for t in prompt_ids if not 0 <= t < vocab_size]
            if bad:
                raise _RequestError(400, f"prompt token ids out of range [0, {vocab_size}): {bad[:5]}", param="prompt")
        if max_positions is not None and len(prompt_ids) >= max_positions:
            raise _RequestError(
                400,
                f"prompt of {len(prompt_ids)} tokens is too long: the model's maximum context length is "
                f"{max_positions} tokens and at least one must be left to generate",
                param="prompt",
            )
        try:
            sampling = SamplingConfig(
                max_new_tokens=16 if req.max_tokens is None else req.max_tokens,
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=-1 if req.top_k in (None, 0) else req.top_k,
                stop=tuple(req.stop),
            )
        except ValueError as exc:
            raise _RequestError(400, str(exc)) from exc
        return req, prompt_ids, sampling

    def render(req, prompt_ids: list[int], gen) -> dict:
        ids = list(gen.token_ids)
        text = tokenizer.decode(ids, skip_special_tokens=req.skip_special_tokens)
        stop_reason = None
        if gen.finish_reason == "stop" and req.stop:
            hits = [(text.find(s), s) for s in req.stop if s in text]
            if hits:
                at, stop_reason = min(hits, key=lambda h: (h[0], -len(h[1])))
                text = text[: at + (len(stop_reason) if req.include_stop_str_in_output else 0)]
            else:  # e.g. a special-token stop string hidden by skip_special_tokens
                stop_reason = next((s for s in req.stop if s in tokenizer.decode(ids[-16:])), None)
        choice: dict[str, Any] = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": "length" if gen.finish_reason == "length" else "stop",
            "stop_reason": stop_reason,
        }
        if req.logprobs is not None:
            pieces = [tokenizer.decode([t], skip_special_tokens=False) for t in ids]
            offsets, at = [], 0
            for piece in pieces:
                offsets.append(at)
                at += len(piece)
            tokens = [f"token_id:{t}" for t in ids] if req.return_tokens_as_token_ids else pieces
            choice["logprobs"] = {
                "tokens": tokens,
                "token_logprobs": [float(x) for x in gen.logprobs],
                "top_logprobs": None,
                "text_offset": offsets,
            }
        if req.return_token_ids:
            choice["prompt_token_ids"] = list(prompt_ids)
            choice["token_ids"] = ids
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": len(ids),
                "total_tokens": len(prompt_ids) + len(ids),
            },
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            req, prompt_ids, sampling = parse(await request.body())
        except _RequestError as exc:
            return _error_response(exc.status, exc.message, exc.kind, exc.param)
        try:
            gen = await backend.generate(prompt_ids, sampling)
        except ValueError as exc:
            return _error_response(400, str(exc))
        except Exception as exc:  # keep serving; the backend's worker survives a failed batch
            logger.exception("generation failed")
            return _error_response(500, f"generation failed: {exc!r}", "InternalServerError")
        return render(req, prompt_ids, gen)

    return app


def serve_llm(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    device: str = "cpu",
    dtype: str = "float32",
    max_batch_size: int = 16,
    served_name: str | None = None,
    seed: int = 0,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Load ``model`` (hub name or local path) and serve it with uvicorn until interrupted."""
    import uvicorn

    from verl_mem1.rollout.backends.hf_local import HFLocalBackend

    backend = HFLocalBackend(model, device=device, dtype=dtype, max_batch_size=max_batch_size, seed=seed)
    name = served_name or str(model)
    logger.info("serving %s as %r on http://%s:%d/v1", model, name, host, port)
    uvicorn.run(create_app(backend, name), host=host, port=port, log_level=log_level, access_log=access_log)
