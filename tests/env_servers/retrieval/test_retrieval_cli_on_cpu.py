"""``mem1 corpus hotpotqa``, ``mem1 index build`` and ``mem1 serve retrieval`` through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from env_servers.background import free_port
from env_servers.retrieval.corpus import read_corpus
from tests.support import wait_until_healthy
from verl_mem1.cli import main

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["corpus", "hotpotqa"], ["--source", "--out", "bundled"]),
        (
            ["index", "build"],
            ["--corpus", "--out", "--encoder", "--faiss-index", "hnsw", "--batch-size", "--device"]
            + ["--shard-size", "resumes", "--keep-vectors", "--from-faiss", "--train-size"],
        ),
        (["serve", "retrieval"], ["--index", "--host", "--port", "/retrieve", "--faiss-gpus"]),
    ],
)
def test_help(argv: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out


def test_corpus_then_bm25_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.jsonl"
    assert main(["corpus", "hotpotqa", "--out", str(corpus)]) == 0
    n = len(read_corpus(corpus))
    assert f"wrote {n} paragraphs" in capsys.readouterr().out and n > 5500

    index = tmp_path / "index"
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(index), "--encoder", "bm25", "--quiet"]) == 0
    meta = json.loads((index / "meta.json").read_text())
    assert meta["kind"] == "bm25" and meta["num_docs"] == n


def test_corpus_from_chosen_sources(tmp_path: Path) -> None:
    from env_servers.retrieval.corpus import default_hotpotqa_sources

    train, dev = default_hotpotqa_sources()
    out = tmp_path / "c.jsonl"
    assert main(["corpus", "hotpotqa", "--source", str(dev), "--out", str(out)]) == 0
    only_dev = len(read_corpus(out))
    assert main(["corpus", "hotpotqa", "--source", str(train), "--source", str(dev), "--out", str(out)]) == 0
    assert only_dev < len(read_corpus(out))


def test_dense_index_build(small_corpus: Path, tiny_encoder: Path, tmp_path: Path) -> None:
    out = tmp_path / "dense"
    argv = ["index", "build", "--corpus", str(small_corpus), "--out", str(out), "--encoder", str(tiny_encoder)]
    assert main([*argv, "--faiss-index", "hnsw", "--batch-size", "32", "--max-length", "32", "--device", "cpu"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "dense" and meta["faiss_index"] == "hnsw" and meta["max_length"] == 32
    assert (out / "index.faiss").is_file() and (out / "docs.jsonl").is_file()


def test_bad_corpus_line_exits_2_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "1", "contents": "\\"A\\"\\na"}\n{"id": "2", "contents": 5}\n')
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / "i"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "mem1 index build: error:" in err and "corpus.jsonl, line 2" in err and "contents" in err
    assert "Traceback" not in err
    assert not (tmp_path / "i" / "meta.json").exists()


def test_missing_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "build", "--corpus", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "i")]) == 2
    assert "none.jsonl" in capsys.readouterr().err
    assert main(["serve", "retrieval", "--index", str(tmp_path / "missing")]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    assert main(["serve", "retrieval", "--index", str(tmp_path)]) == 2
    assert "not a retrieval index" in capsys.readouterr().err
    assert main(["corpus", "hotpotqa", "--source", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "c")]) == 2
    assert "x.jsonl" in capsys.readouterr().err


def test_cli_module_imports_are_cheap() -> None:
    """``mem1 --help`` imports this module; the heavy stack must load only inside handlers."""
    code = (
        "import sys, env_servers.retrieval.cli; "
        "print([m for m in ('torch', 'faiss', 'bm25s', 'fastapi', 'transformers', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_serve_retrieval_subprocess(bm25_index: Path) -> None:
    """``mem1 serve retrieval`` as a real process: serves, answers, and stops on SIGTERM."""
    port = free_port()
    cmd = [sys.executable, "-m", "verl_mem1.cli", "serve", "retrieval", "--index", str(bm25_index), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(proc, url)
        r = httpx.post(f"{url}/retrieve", json={"queries": ["Tinted Windows band"], "topk": 2, "return_scores": True})
        assert r.status_code == 200 and len(r.json()["result"][0]) == 2
        assert httpx.post(f"{url}/retrieve", json={"query": ""}).status_code == 422
    finally:
        proc.terminate()
        proc.wait(timeout=30)
