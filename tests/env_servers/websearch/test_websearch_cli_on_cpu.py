"""``mem1 serve websearch``: argument parsing, the key check, wiring into ``serve``, and the real entry point."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import diskcache
import httpx
import pytest

import env_servers.websearch.server as server_module
from env_servers.background import free_port
from env_servers.websearch.cli import add_serve_websearch_command
from tests.env_servers.websearch.fake_serper import API_KEY, FakeSerper, expected_contents
from tests.support import wait_until_healthy

REPO = Path(__file__).resolve().parents[3]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mem1 serve")
    add_serve_websearch_command(p.add_subparsers(dest="serve_command", required=True))
    return p


def run_handler(argv: list[str]) -> int:
    args = parser().parse_args(["websearch", *argv])
    return args.func(args)


@pytest.fixture()
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Calls of ``serve`` (replaced: nothing binds a port)."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(server_module, "serve", lambda *a, **kw: calls.append({"args": a, **kw}))
    return calls


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["websearch", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in (
        "--provider",
        "serper",
        "--cache-dir",
        "--rate-limit",
        "--max-retries",
        "--base-url",
        "SERPER_API_KEY",
    ):
        assert word in out


@pytest.mark.parametrize("value", [None, "", "  "])
def test_missing_key_exits_2_naming_the_variable(
    value: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], served: list
) -> None:
    if value is None:
        monkeypatch.delenv("SERPER_API_KEY", raising=False)
    else:
        monkeypatch.setenv("SERPER_API_KEY", value)
    assert run_handler(["--provider", "serper"]) == 2
    err = capsys.readouterr().err
    assert "SERPER_API_KEY" in err and err.startswith("mem1 serve websearch: error:")
    assert served == []


def test_handler_passes_the_settings_to_serve(monkeypatch: pytest.MonkeyPatch, served: list) -> None:
    monkeypatch.setenv("SERPER_API_KEY", API_KEY)
    assert run_handler([]) == 0
    (call,) = served
    assert call["args"] == ("serper",) and call["api_key"] == API_KEY
    assert call["host"] == "127.0.0.1" and call["port"] == 8002
    assert call["cache_dir"] == "~/.cache/verl-mem1/serper" and call["rate_limit"] == 5.0
    assert call["max_retries"] == 3 and call["base_url"] == "https://google.serper.dev"

    argv = [
        "--port",
        "9000",
        "--no-cache",
        "--rate-limit",
        "0",
        "--max-retries",
        "1",
        "--base-url",
        "http://127.0.0.1:1",
    ]
    assert run_handler(argv) == 0
    call = served[-1]
    assert call["port"] == 9000 and call["cache_dir"] is None and call["rate_limit"] == 0.0
    assert call["max_retries"] == 1 and call["base_url"] == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--rate-limit", "-1"], "--rate-limit"),
        (["--max-retries", "-2"], "--max-retries"),
        (["--timeout", "0"], "timeout"),
    ],
)
def test_bad_settings_exit_2(
    argv: list[str], words: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], served: list
) -> None:
    monkeypatch.setenv("SERPER_API_KEY", API_KEY)
    assert run_handler(argv) == 2
    err = capsys.readouterr().err
    assert words in err and API_KEY not in err and served == []


def test_unusable_cache_dir_exits_2_before_binding(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("SERPER_API_KEY", API_KEY)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert run_handler(["--cache-dir", str(blocker / "cache"), "--port", str(free_port())]) == 2
    assert "mem1 serve websearch: error:" in capsys.readouterr().err


def test_cli_module_import_is_cheap() -> None:
    code = (
        "import sys, env_servers.websearch.cli; "
        "heavy = [m for m in ('fastapi', 'httpx', 'uvicorn', 'pydantic') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_real_entry_point_serves_from_the_fake(fake: FakeSerper, tmp_path: Path) -> None:
    """``mem1 serve websearch`` (python -m verl_mem1.cli) in its own process, searching the fake Serper."""
    port = free_port()
    env = {**os.environ, "SERPER_API_KEY": API_KEY, "PYTHONPATH": str(REPO)}
    argv = ["serve", "websearch", "--provider", "serper", "--port", str(port), "--base-url", fake.url]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--log-level", "debug"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "verl_mem1.cli", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until_healthy(proc, url, timeout_s=30) == {"status": "ok", "provider": "serper"}
        r = httpx.post(f"{url}/retrieve", json={"query": "eiffel tower", "topk": 2, "return_scores": True}, timeout=10)
        assert r.status_code == 200
        assert r.json()["result"][0][0]["document"]["contents"] == expected_contents("eiffel tower", 1)
        with diskcache.Cache(tmp_path / "cache") as stored:
            assert fake.count == 1 and len(stored) == 1
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=15)
    assert API_KEY not in output  # uvicorn's own logs, at debug level, included
    assert "/retrieve" in output  # the access log was there to check
