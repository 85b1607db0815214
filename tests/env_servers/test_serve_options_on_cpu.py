"""The options every ``mem1 serve`` server shares: the same names and defaults everywhere, handed to uvicorn."""

from __future__ import annotations

import argparse

import pytest

from env_servers.serve_options import add_server_options, run_server, server_settings
from verl_mem1.cli import build_parser

DEFAULT_PORTS = {"retrieval": 8000, "llm": 8001, "websearch": 8002, "webshop": 8003}
REQUIRED = {"retrieval": ["--index", "idx"], "llm": ["--model", "m"], "websearch": [], "webshop": []}


@pytest.mark.parametrize("server", sorted(DEFAULT_PORTS))
def test_every_server_has_the_shared_options(server: str) -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", server, *REQUIRED[server]])
    assert server_settings(args) == {
        "host": "127.0.0.1",
        "port": DEFAULT_PORTS[server],
        "log_level": "info",
        "access_log": True,
    }
    argv = ["--host", "0.0.0.0", "--port", "9", "--log-level", "debug", "--no-access-log"]
    args = parser.parse_args(["serve", server, *REQUIRED[server], *argv])
    assert server_settings(args) == {"host": "0.0.0.0", "port": 9, "log_level": "debug", "access_log": False}


def test_bad_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="server")
    add_server_options(parser, 1234)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--log-level", "loud"])
    assert info.value.code == 2 and "--log-level" in capsys.readouterr().err


def test_run_server_hands_the_options_to_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    parser = argparse.ArgumentParser(prog="server")
    add_server_options(parser, 1234)
    app = object()
    run_server(app, parser.parse_args(["--no-access-log"]))
    assert calls == [(app, {"host": "127.0.0.1", "port": 1234, "log_level": "info", "access_log": False})]


def test_a_server_with_an_api_key_refuses_requests_without_it(bm25_retriever, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23, finding 13: a server bound beyond loopback on a cluster served anyone. With ``--api-key`` (or
    $MEM1_API_KEY) every request but /health needs the bearer token (401 with the reason); the project's client sends
    it from $MEM1_API_KEY; the server keeps serving after refusals."""
    import asyncio

    import httpx

    from env_servers.background import BackgroundServer
    from env_servers.retrieval.server import create_app
    from env_servers.serve_options import API_KEY_ENV, protect
    from verl_mem1.rollout.environment import EnvServerError, RetrievalEnvironment

    parser = argparse.ArgumentParser(prog="server")
    add_server_options(parser, 1234)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    app = protect(create_app(bm25_retriever), parser.parse_args(["--api-key", "s3cret"]))
    body = {"queries": ["Which city hosted Tinted Windows' first performance?"], "topk": 2}
    with BackgroundServer(app) as server:
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # open: start-up checks probe it
        missing = httpx.post(server.url + "/retrieve", json=body, timeout=10)
        assert missing.status_code == 401 and "missing 'Authorization: Bearer" in missing.json()["detail"]
        wrong = httpx.post(server.url + "/retrieve", json=body, headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401 and "wrong bearer token" in wrong.json()["detail"]
        right = httpx.post(server.url + "/retrieve", json=body, headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert right.status_code == 200 and len(right.json()["result"][0]) == 2

        async def search(key: str | None):
            if key is None:
                monkeypatch.delenv(API_KEY_ENV, raising=False)
            else:
                monkeypatch.setenv(API_KEY_ENV, key)
            env = RetrievalEnvironment(server.url, topk=2, retries=1, retry_wait_s=0.01)
            try:
                return await env.search(body["queries"])
            finally:
                await env.aclose()

        assert len(asyncio.run(search("s3cret"))[0]) == 2  # the client sends $MEM1_API_KEY
        with pytest.raises(EnvServerError, match="answered 401"):  # a 4xx is not retried: the reason comes back
            asyncio.run(search(None))


def test_binding_beyond_loopback_without_a_key_warns(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    from env_servers.serve_options import API_KEY_ENV, bind_warning, protect

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert bind_warning("127.0.0.1", None) is None and bind_warning("0.0.0.0", "k") is None
    parser = argparse.ArgumentParser(prog="server")
    add_server_options(parser, 1234)
    app = object()
    with caplog.at_level("WARNING"):
        assert protect(app, parser.parse_args(["--host", "0.0.0.0"])) is app
    assert "without an API key" in caplog.text
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert protect(app, parser.parse_args(["--host", "0.0.0.0"])) is not app  # $MEM1_API_KEY protects it too
