"""Search-R1's artifacts served as they are: a faiss Flat index file and its corpus JSONL (read in place), queries
encoded as Search-R1 encodes them (E5 prefixes and mean pooling; BGE's instruction and [CLS]), giving what the
project's own index built from the same vectors gives."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from env_servers.retrieval.corpus import LazyCorpus
from env_servers.retrieval.encoder import BGE_QUERY_PREFIX, DenseEncoder, default_pooling
from env_servers.retrieval.index import build_index, load_retriever, load_search_r1_retriever


@pytest.fixture(scope="module")
def e5_named_encoder(tmp_path_factory) -> Path:
    """A tiny random BERT whose name says E5, so it gets E5's prefixes as Search-R1 gives them by name."""
    from verl_mem1.tiny_model import build_random_bert

    return build_random_bert(tmp_path_factory.mktemp("models") / "tiny-e5-bert", max_position_embeddings=512)


@pytest.fixture(scope="module")
def search_r1_files(small_corpus: Path, e5_named_encoder: Path, tmp_path_factory) -> tuple[Path, Path]:
    """``e5_Flat.index`` + ``wiki.jsonl`` as Search-R1's index builder writes them: passages with ``passage: ``,
    mean-pooled, normalised, in an inner-product Flat index in corpus order; rows with an extra field."""
    import faiss

    root = tmp_path_factory.mktemp("search-r1")
    rows = [json.loads(line) for line in small_corpus.read_text(encoding="utf-8").splitlines()[:80]]
    corpus = root / "wiki.jsonl"
    with corpus.open("w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps({"id": str(i), "contents": row["contents"], "source": "test"}) + "\n")
            if i == 10:
                f.write("\n")  # a blank line is not a document
    encoder = DenseEncoder(str(e5_named_encoder), max_length=256, device="cpu")
    vectors = encoder.encode(["passage: " + row["contents"] for row in rows])
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(root / "e5_Flat.index"))
    return root / "e5_Flat.index", corpus


def test_served_as_they_are_equal_the_projects_own_index(search_r1_files, e5_named_encoder, dev_questions, tmp_path):
    index_file, corpus = search_r1_files
    theirs = load_search_r1_retriever(index_file, corpus, str(e5_named_encoder), device="cpu")
    assert theirs.meta["query_prefix"] == "query: " and theirs.meta["pooling"] == "mean"
    own_corpus = tmp_path / "own.jsonl"
    own_corpus.write_text(
        "".join(json.dumps({"id": d["id"], "contents": d["contents"]}) + "\n" for d in LazyCorpus(corpus))
    )
    ours = load_retriever(build_index(own_corpus, tmp_path / "own", str(e5_named_encoder), show_progress=False))
    questions = [q["question"] for q in dev_questions[:20]]
    for got, want in zip(theirs.search(questions, 5), ours.search(questions, 5), strict=True):
        assert [d["id"] for d, _ in got] == [d["id"] for d, _ in want]
        assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(got, want, strict=True))
        assert all(d["source"] == "test" for d, _ in got)  # whole rows, as Search-R1 returns them


def test_served_over_http(search_r1_files, e5_named_encoder, dev_questions, wait_healthy):
    from env_servers.background import BackgroundServer
    from env_servers.retrieval.server import create_app

    index_file, corpus = search_r1_files
    retriever = load_search_r1_retriever(index_file, corpus, str(e5_named_encoder), device="cpu")
    with BackgroundServer(create_app(retriever)) as server:
        assert wait_healthy(server.url)["num_docs"] == 80
        body = {"queries": [dev_questions[0]["question"]], "topk": 3, "return_scores": True}
        hits = httpx.post(f"{server.url}/retrieve", json=body, timeout=30).json()["result"][0]
        want = retriever.search(body["queries"], 3)[0]
        assert [h["document"] for h in hits] == [d for d, _ in want]


def test_corpus_is_read_in_place(search_r1_files, tmp_path):
    _, corpus = search_r1_files
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = LazyCorpus(corpus)
    assert len(docs) == 80 and docs[0] == json.loads(lines[0]) and docs[-1] == json.loads(lines[-1])
    assert docs[11]["id"] == "11"  # after the blank line
    offsets = corpus.with_name(corpus.name + ".offsets.npy")
    assert offsets.is_file()  # kept for the next start
    again = LazyCorpus(corpus)
    assert np.array_equal(again._offsets, docs._offsets)
    copy = tmp_path / "copy.jsonl"
    copy.write_text(corpus.read_text(encoding="utf-8") + '{"id": "x", "contents": "\\"X\\"\\nnew"}\n')
    assert len(LazyCorpus(copy)) == 81
    time.sleep(0.01)
    copy.write_text('{"id": "a", "contents": "A"}\nnot json\n')  # changed: its offsets are scanned again
    os.utime(copy.with_name(copy.name + ".offsets.npy"), (0, 0))
    changed = LazyCorpus(copy)
    assert len(changed) == 2 and changed[0]["id"] == "a"
    with pytest.raises(ValueError, match=r"copy.jsonl, document 1: not JSON"):
        changed[1]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="corpus is empty"):
        LazyCorpus(empty)


def test_bge_is_encoded_as_search_r1_encodes_it(tmp_path, dev_questions):
    """BGE: its instruction before queries and the [CLS] token; packed queries embed as they do alone."""
    from env_servers.retrieval.encoder import encoder_prefixes
    from verl_mem1.tiny_model import build_random_bert

    assert default_pooling("BAAI/bge-base-en-v1.5") == "cls" and default_pooling("intfloat/e5-base-v2") == "mean"
    assert encoder_prefixes("BAAI/bge-base-en-v1.5") == (BGE_QUERY_PREFIX, "")
    enc = DenseEncoder(str(build_random_bert(tmp_path / "tiny-bge")), device="cpu", pooling="cls")
    texts = [q["question"] for q in dev_questions[:9]]
    alone = np.stack([enc.encode([t])[0] for t in texts])
    np.testing.assert_allclose(enc.encode_packed(texts, max_tokens=40), alone, atol=1e-5)
    mean = DenseEncoder(str(tmp_path / "tiny-bge"), device="cpu", pooling="mean")
    assert np.abs(mean.encode(texts[:1]) - alone[:1]).max() > 1e-3  # the pooling matters
    with pytest.raises(ValueError, match="unknown pooling"):
        DenseEncoder(str(tmp_path / "tiny-bge"), device="cpu", pooling="max")


def test_cli_checks_the_files_first(search_r1_files, tmp_path, capsys):
    from verl_mem1.cli import main

    index_file, corpus = search_r1_files
    assert main(["serve", "retrieval", "--index", str(tmp_path), "--faiss-index", str(index_file)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["serve", "retrieval", "--faiss-index", str(index_file), "--corpus", str(corpus)]) == 2
    assert "all of --faiss-index FILE --corpus FILE --encoder NAME" in capsys.readouterr().err
    missing = ["--faiss-index", str(tmp_path / "nope.index"), "--corpus", str(corpus), "--encoder", "e5"]
    assert main(["serve", "retrieval", *missing]) == 2
    assert "file not found" in capsys.readouterr().err


def test_a_mismatched_index_fails_at_start_up(search_r1_files, e5_named_encoder, tmp_path):
    import faiss

    _, corpus = search_r1_files
    wrong = tmp_path / "wrong.index"
    index = faiss.IndexFlatIP(7)
    index.add(np.zeros((80, 7), dtype=np.float32))
    faiss.write_index(index, str(wrong))
    with pytest.raises(RuntimeError, match="7-d vectors"):
        load_search_r1_retriever(wrong, corpus, str(e5_named_encoder), device="cpu")


def test_search_r1_flat_index_compressed_without_encoding(search_r1_files, e5_named_encoder, dev_questions, tmp_path):
    """`mem1 index build --from-faiss e5_Flat.index`: the vectors Search-R1 encoded, re-indexed as they are (exact:
    the same results) or compressed (IVF + SQ8: nearly the same), with E5's query prefix recorded for serving."""
    from verl_mem1.cli import main

    index_file, corpus = search_r1_files
    theirs = load_search_r1_retriever(index_file, corpus, str(e5_named_encoder), device="cpu")
    questions = [q["question"] for q in dev_questions[:20]]
    want = theirs.search(questions, 5)
    exact = build_index(corpus, tmp_path / "exact", str(e5_named_encoder), vectors_from=index_file, show_progress=False)
    meta = json.loads((exact / "meta.json").read_text())
    assert meta["query_prefix"] == "query: " and meta["vectors_from"] == str(index_file.resolve())
    assert not (exact / "vectors").exists()  # nothing encoded
    for got, row in zip(load_retriever(exact, device="cpu").search(questions, 5), want, strict=True):
        assert [d["id"] for d, _ in got] == [d["id"] for d, _ in row]
        assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(got, row, strict=True))

    out = tmp_path / "sq8"
    argv = ["index", "build", "--corpus", str(corpus), "--out", str(out), "--encoder", str(e5_named_encoder)]
    assert main([*argv, "--from-faiss", str(index_file), "--faiss-index", "IVF2,SQ8", "--quiet"]) == 0
    hits = load_retriever(out, device="cpu").search(questions, 5)
    overlaps = [len({d["id"] for d, _ in h} & {d["id"] for d, _ in w}) for h, w in zip(hits, want, strict=True)]
    recall = sum(overlaps) / (5 * len(want))
    assert recall >= 0.8, recall


def test_vectors_only_from_an_exact_inner_product_index_of_the_corpus(search_r1_files, e5_named_encoder, tmp_path):
    import faiss

    index_file, corpus = search_r1_files
    vectors = faiss.read_index(str(index_file)).reconstruct_n(0, 80)
    cases = {
        "l2.index": (faiss.IndexFlatL2(vectors.shape[1]), vectors, "ranks by L2 distance"),
        "short.index": (faiss.IndexFlatIP(vectors.shape[1]), vectors[:79], "holds 79 vectors but"),
        "sq.index": (faiss.index_factory(vectors.shape[1], "SQ8", faiss.METRIC_INNER_PRODUCT), vectors, "not an exact"),
    }
    for name, (index, rows, message) in cases.items():
        if not index.is_trained:
            index.train(rows)
        index.add(rows)
        faiss.write_index(index, str(tmp_path / name))
        with pytest.raises(ValueError, match=message):
            build_index(corpus, tmp_path / "out", str(e5_named_encoder), vectors_from=tmp_path / name)
