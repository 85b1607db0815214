"""``OpenAICompletionsBackend`` against a real ``mem1 serve llm`` server (uvicorn on loopback, tiny model).

The server is the same app ``mem1 serve llm`` runs; log-probs are checked against an independent plain
transformers forward pass, stop strings against greedy decoding, and error paths against the real server,
a closed port and a fake server that answers what other OpenAI-compatible servers might. The server's own API
is tested with the server, in ``tests/env_servers/llm/test_llm_server_on_cpu.py``.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request  # at module level: the fake app's annotations resolve against globals
from fastapi.responses import JSONResponse, PlainTextResponse

from env_servers.background import free_port
from tests.support import LLM_MODEL_NAME as MODEL
from tests.support import LLM_PROMPT as PROMPT
from tests.support import recompute_logprobs
from verl_mem1.rollout.backends.base import Generation, SamplingConfig
from verl_mem1.rollout.backends.openai_http import BackendError, OpenAICompletionsBackend


def generate(url: str, prompts: list[list[int]], sampling: SamplingConfig, *, eos: set[int] | None = None):
    """Run ``OpenAICompletionsBackend.generate`` for each prompt concurrently; returns results or exceptions."""

    async def main():
        client = OpenAICompletionsBackend(url, MODEL, eos_token_ids=eos, timeout_s=60)
        try:
            return await asyncio.gather(*(client.generate(p, sampling) for p in prompts), return_exceptions=True)
        finally:
            await client.aclose()

    return asyncio.run(main())


_HTTP: dict[str, httpx.Client] = {}


def post(url: str, body=None, *, content: bytes | None = None) -> httpx.Response:
    """POST straight to the server (one kept-alive client: a new one per request costs tenths of a second)."""
    client = _HTTP.setdefault("client", httpx.Client(timeout=60))
    if content is not None:
        return client.post(url + "/v1/completions", content=content)
    return client.post(url + "/v1/completions", json=body)


# --- OpenAICompletionsBackend against the server ----------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_ids_and_logprobs_match_a_plain_forward(served, prompt_ids, temperature):
    backend, url = served
    (gen,) = generate(url, [prompt_ids], SamplingConfig(max_new_tokens=12, temperature=temperature))
    assert isinstance(gen, Generation), gen
    assert len(gen.token_ids) == len(gen.logprobs) == 12 and gen.finish_reason == "length"
    expected = recompute_logprobs(backend.model, prompt_ids, gen.token_ids, temperature)
    assert max(abs(a - b) for a, b in zip(gen.logprobs, expected, strict=True)) <= 1e-4


def test_concurrent_requests_are_batched(served, prompt_ids):
    backend, url = served
    before = len(backend.batch_sizes)
    prompts = [prompt_ids + [11] * i for i in range(8)]  # different lengths: rows are left-padded
    results = generate(url, prompts, SamplingConfig(max_new_tokens=6, temperature=1.0))
    assert all(isinstance(g, Generation) for g in results), results
    assert all(len(g.token_ids) == 6 for g in results)
    assert max(backend.batch_sizes[before:]) > 1, backend.batch_sizes[before:]
    for prompt, gen in zip(prompts, results, strict=True):  # padding does not change the recorded log-probs
        expected = recompute_logprobs(backend.model, prompt, gen.token_ids, 1.0)
        assert max(abs(a - b) for a, b in zip(gen.logprobs, expected, strict=True)) <= 1e-4


def _fresh_piece(tokenizer, ids: list[int]) -> tuple[int, str] | None:
    """A token in the middle of ``ids`` whose text first occurs exactly where that token starts."""
    text = tokenizer.decode(ids)
    at = 0
    for k, t in enumerate(ids):
        piece = tokenizer.decode([t])
        if k >= len(ids) // 3 and piece.strip() and "\ufffd" not in piece and text.find(piece) == at:
            return k, piece
        at += len(piece)
    return None


def test_stop_string_ends_generation(served):
    backend, url = served
    tok = backend.tokenizer
    greedy = SamplingConfig(max_new_tokens=24, temperature=0.0)
    for prompt in (PROMPT, "Once upon a time", "def main():", "1, 2, 3, 4"):
        ids = tok.encode(prompt, add_special_tokens=False)
        (full,) = generate(url, [ids], greedy, eos=backend.eos_ids)
        assert full.finish_reason == "length", full
        found = _fresh_piece(tok, full.token_ids)
        if found:
            break
    else:
        pytest.fail("the tiny model produced no usable stop string for any prompt")
    k, stop = found
    full_text = tok.decode(full.token_ids)
    stop_at = full_text.find(stop)

    sampling = SamplingConfig(max_new_tokens=24, temperature=0.0, stop=(stop,))
    (stopped,) = generate(url, [ids], sampling, eos=backend.eos_ids)
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == full.token_ids[: k + 1]  # greedy: the same tokens, cut at the stop string
    assert len(stopped.token_ids) < len(full.token_ids)
    assert stopped.logprobs == pytest.approx(full.logprobs[: k + 1], abs=1e-5)

    body = {"model": MODEL, "prompt": ids, "max_tokens": 24, "temperature": 0, "stop": [stop]}
    choice = post(url, {**body, "include_stop_str_in_output": True}).json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    assert choice["text"] == full_text[: stop_at + len(stop)] and choice["text"].endswith(stop)
    choice = post(url, {**body, "stop": stop, "return_token_ids": True}).json()["choices"][0]
    assert choice["text"] == full_text[:stop_at]  # vLLM's default: the text ends before the stop string ...
    assert choice["token_ids"] == stopped.token_ids  # ... but the tokens that made it are still returned


def test_max_tokens_is_respected(served, prompt_ids):
    _, url = served
    for n in (1, 3):
        (gen,) = generate(url, [prompt_ids], SamplingConfig(max_new_tokens=n, temperature=1.0))
        assert len(gen.token_ids) == n and gen.finish_reason == "length"


def test_eos_is_reported_as_eos(served, prompt_ids):
    """The server says "stop" for EOS (OpenAI convention); the client tells EOS from stop strings by the id."""
    backend, url = served
    greedy = SamplingConfig(max_new_tokens=4, temperature=0.0)
    (first,) = generate(url, [prompt_ids], greedy)
    eos = first.token_ids[1]  # the random model never samples a real EOS: declare its 2nd greedy token one
    saved = backend.eos_ids
    backend.eos_ids = {eos}
    try:
        (gen,) = generate(url, [prompt_ids], greedy, eos={eos})
        choice = post(url, {"model": MODEL, "prompt": prompt_ids, "max_tokens": 4, "temperature": 0}).json()
    finally:
        backend.eos_ids = saved
    assert gen.token_ids == first.token_ids[: first.token_ids.index(eos) + 1] and gen.finish_reason == "eos"
    assert choice["choices"][0]["finish_reason"] == "stop" and choice["choices"][0]["stop_reason"] is None


# --- error paths ----------------------------------------------------------------------------------------------


def test_wrong_model_name_is_a_backend_error(served, prompt_ids):
    _, url = served

    async def main():
        client = OpenAICompletionsBackend(url, "not-served", timeout_s=30)
        try:
            await client.generate(prompt_ids, SamplingConfig(max_new_tokens=2))
        finally:
            await client.aclose()

    with pytest.raises(BackendError, match="404"):
        asyncio.run(main())


def test_server_down_is_a_backend_error():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    (result,) = generate(url, [[1, 2, 3]], SamplingConfig(max_new_tokens=2))
    assert isinstance(result, BackendError) and "unreachable" in str(result)


def _fake_server():
    """An OpenAI-compatible server that answers 200 with bodies the backend cannot use."""
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        mode = body["model"]
        if mode == "malformed":
            return PlainTextResponse('{"choices": [', media_type="application/json")
        if mode == "no-choices":
            return JSONResponse({"object": "text_completion", "choices": []})
        # "text-tokens": an OpenAI-style answer with token strings, no token ids (return_token_ids unsupported)
        logprobs = {"tokens": ["Hello", " world"], "token_logprobs": [-0.5, -0.25], "top_logprobs": None}
        choice = {"index": 0, "text": "Hello world", "logprobs": logprobs, "finish_reason": "length"}
        return JSONResponse({"object": "text_completion", "choices": [choice]})

    return app


@pytest.mark.parametrize(
    ("mode", "message"),
    [("malformed", "malformed"), ("no-choices", "malformed"), ("text-tokens", "token ids")],
)
def test_unusable_server_answers_are_backend_errors(mode, message):
    async def main():
        transport = httpx.ASGITransport(app=_fake_server())
        async with httpx.AsyncClient(transport=transport, base_url="http://fake") as http:
            client = OpenAICompletionsBackend("http://fake", mode, client=http)
            await client.generate([1, 2, 3], SamplingConfig(max_new_tokens=2))

    with pytest.raises(BackendError, match=message):
        asyncio.run(main())
