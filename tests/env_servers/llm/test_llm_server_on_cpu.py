"""``mem1 serve llm``'s own API (uvicorn on loopback, tiny model): response format, bad requests, the CLI.

``OpenAICompletionsBackend`` against this server is tested with the backend, in
``tests/rollout/test_openai_backend_on_cpu.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from env_servers.background import BackgroundServer
from env_servers.llm.server import create_app
from tests.support import LLM_MODEL_NAME as MODEL
from tests.support import LLM_PROMPT as PROMPT
from verl_mem1.rollout.backends.hf_local import HFLocalBackend

REPO = Path(__file__).resolve().parents[3]

_HTTP: dict[str, httpx.Client] = {}


def post(url: str, body=None, *, content: bytes | None = None) -> httpx.Response:
    """POST straight to the server (one kept-alive client: a new one per request costs tenths of a second)."""
    client = _HTTP.setdefault("client", httpx.Client(timeout=60))
    if content is not None:
        return client.post(url + "/v1/completions", content=content)
    return client.post(url + "/v1/completions", json=body)


# --- the server's own API -------------------------------------------------------------------------------------


def test_models_and_health(served):
    _, url = served
    assert httpx.get(url + "/health").status_code == 200
    models = httpx.get(url + "/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"]) for m in models["data"]] == [(MODEL, "model")]


def test_string_prompt_response_format(served, prompt_ids):
    backend, url = served
    r = post(url, {"model": MODEL, "prompt": PROMPT, "max_tokens": 5, "logprobs": 0, "return_token_ids": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == MODEL
    assert body["id"] and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    ids = choice["token_ids"]
    assert len(ids) == 5
    assert choice["prompt_token_ids"] == prompt_ids  # the string was tokenized without special tokens
    assert choice["text"] == backend.tokenizer.decode(ids, skip_special_tokens=True)
    lp = choice["logprobs"]
    pieces = [backend.tokenizer.decode([t]) for t in ids]
    assert lp["tokens"] == pieces  # token strings unless return_tokens_as_token_ids
    assert len(lp["token_logprobs"]) == 5 and all(x <= 0 for x in lp["token_logprobs"])
    assert lp["top_logprobs"] is None
    assert lp["text_offset"] == [sum(len(p) for p in pieces[:i]) for i in range(5)]
    assert body["usage"] == {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": 5,
        "total_tokens": len(prompt_ids) + 5,
    }

    r = post(url, {"model": MODEL, "prompt": prompt_ids, "max_tokens": 2, "return_tokens_as_token_ids": True})
    choice = r.json()["choices"][0]
    assert choice["logprobs"] is None and "token_ids" not in choice  # neither was asked for


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"model": "gpt-4", "prompt": [1, 2]}, 404, "does not exist"),
        ({"model": MODEL, "prompt": []}, 400, "prompt is empty"),
        ({"model": MODEL, "prompt": ""}, 400, "empty"),
        ({"model": MODEL, "prompt": [[1, 2], [3, 4]]}, 400, "batched prompts not supported"),
        ({"model": MODEL, "prompt": ["a", "b"]}, 400, "batched prompts not supported"),
        ({"model": MODEL, "prompt": [1, "two"]}, 400, "prompt"),
        ({"model": MODEL, "prompt": 17}, 400, "prompt"),
        ({"model": MODEL, "prompt": [1, 2], "max_tokens": "many"}, 400, "max_tokens"),
        ({"model": MODEL, "prompt": [1, 2], "max_tokens": 0}, 400, "max_tokens"),
        ({"model": MODEL, "prompt": [1, 2], "temperature": "hot"}, 400, "temperature"),
        ({"model": MODEL, "prompt": [1, 2], "top_p": 0}, 400, "top_p"),
        ({"model": MODEL, "prompt": [1, 2], "logprobs": -1}, 400, "logprobs"),
        ({"model": MODEL, "prompt": [1, 2], "stop": 5}, 400, "stop"),
        ({"model": MODEL, "prompt": [1, 2], "n": 2}, 400, "n=2"),
        ({"model": MODEL, "prompt": [1, 2], "stream": True}, 400, "stream"),
        ({"model": MODEL, "prompt": [10**9]}, 400, "out of range"),
        ({"model": MODEL, "prompt": [-1]}, 400, "out of range"),
        ({"prompt": [1, 2]}, 400, "model"),
        ([1, 2, 3], 400, "object"),
    ],
)
def test_bad_requests_are_rejected_and_the_server_keeps_serving(served, body, status, reason):
    _, url = served
    r = post(url, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert reason in error["message"], error
    assert error["code"] == status
    good = post(url, {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 2})
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 2


def test_bad_json_and_too_long_prompt(served):
    backend, url = served
    r = post(url, content=b'{"model": "tiny-qwen", "prompt": [1, 2')
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]

    short_backend = HFLocalBackend(model=backend.model, tokenizer=backend.tokenizer)
    short_backend.max_positions = 8  # a model with an 8-token context
    with BackgroundServer(create_app(short_backend, MODEL)) as short:
        r = post(short.url, {"model": MODEL, "prompt": list(range(1, 9))})
        assert r.status_code == 400 and "too long" in r.json()["error"]["message"]
        r = post(short.url, {"model": MODEL, "prompt": list(range(1, 6)), "max_tokens": 10})
        assert r.status_code == 200  # max_tokens is capped by the context left, as the backend does
        choice = r.json()["choices"][0]
        assert r.json()["usage"]["completion_tokens"] == 3 and choice["finish_reason"] == "length"


# --- the command ---------------------------------------------------------------------------------------------


def test_cli_help():
    from verl_mem1.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", "llm", "--help"])
    assert exc.value.code == 0


def test_help_lists_the_options(capsys):
    from verl_mem1.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "llm", "--help"])
    out = capsys.readouterr().out
    for word in ("--model", "--served-name", "--device", "--dtype", "--max-batch-size", "--seed"):
        assert word in out
    for word in ("--host", "--port", "default 8001", "--log-level", "--no-access-log"):  # the shared server options
        assert word in out


def test_handler_passes_the_settings_to_serve_llm(monkeypatch, capsys):
    import env_servers.llm.server as server_module
    from verl_mem1.cli import main

    calls = []
    monkeypatch.setattr(server_module, "serve_llm", lambda *a, **kw: calls.append((a, kw)))
    assert main(["serve", "llm", "--model", "some/model"]) == 0
    (args, kwargs), *_ = calls
    assert args == ("some/model",)
    assert kwargs == {
        "device": "cpu",
        "dtype": "float32",
        "max_batch_size": 16,
        "served_name": None,
        "seed": 0,
        "host": "127.0.0.1",
        "port": 8001,
        "log_level": "info",
        "access_log": True,
    }
    argv = ["serve", "llm", "--model", "m", "--port", "9001", "--log-level", "warning", "--no-access-log"]
    assert main(argv) == 0
    assert {k: calls[-1][1][k] for k in ("port", "log_level", "access_log")} == {
        "port": 9001,
        "log_level": "warning",
        "access_log": False,
    }

    def fail(*a, **kw):
        raise OSError("no such model")

    monkeypatch.setattr(server_module, "serve_llm", fail)
    assert main(["serve", "llm", "--model", "missing"]) == 2
    assert capsys.readouterr().err.startswith("mem1 serve llm: error: no such model")


def test_cli_module_import_is_cheap():
    code = (
        "import sys, env_servers.llm.cli; "
        "heavy = [m for m in ('fastapi', 'uvicorn', 'pydantic', 'torch', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_the_library_does_not_import_the_server():
    """The server sits beside ``verl_mem1``: ``env_servers/commands.py`` registers its subcommand (which ``mem1``
    mounts), and nothing in ``verl_mem1`` names it."""
    importers = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "verl_mem1").rglob("*.py")
        if "env_servers.llm" in path.read_text(encoding="utf-8")
    )
    assert importers == []
    assert "from env_servers.llm.cli import add_serve_llm_command" in (REPO / "env_servers/commands.py").read_text()
