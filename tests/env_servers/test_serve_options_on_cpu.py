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
