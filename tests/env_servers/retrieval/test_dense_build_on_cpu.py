"""Dense builds at scale: resumable sharded encoding, vectors reused across index kinds; GPU options on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from env_servers.retrieval.corpus import read_corpus
from env_servers.retrieval.dense_build import encode_in_shards
from env_servers.retrieval.encoder import DenseEncoder
from env_servers.retrieval.index import build_index, load_retriever


class _Killable:
    """A real encoder that is 'killed' (KeyboardInterrupt) when asked for shard number ``kill_at`` (1-based)."""

    def __init__(self, encoder: DenseEncoder, kill_at: int | None = None) -> None:
        self.encoder, self.kill_at, self.calls = encoder, kill_at, []

    def __call__(self, texts, advance) -> np.ndarray:
        self.calls.append(len(texts))
        if len(self.calls) == self.kill_at:
            raise KeyboardInterrupt
        return self.encoder.encode(texts, batch_size=16, on_batch=advance)


@pytest.fixture(scope="module")
def encoder(tiny_bert_encoder: Path) -> DenseEncoder:
    return DenseEncoder(str(tiny_bert_encoder), max_length=64, device="cpu")


@pytest.fixture(scope="module")
def texts(small_corpus: Path) -> list[str]:
    return [d["contents"] for d in read_corpus(small_corpus)]  # 200 passages: shards of 64, 64, 64, 8


def test_killed_encoding_resumes_after_the_last_finished_shard(encoder, texts, tmp_path, capsys):
    out, fingerprint = tmp_path / "vectors", {"encoder": "tiny-bert", "corpus_blake2b": "abc"}
    killed = _Killable(encoder, kill_at=3)
    with pytest.raises(KeyboardInterrupt):
        encode_in_shards(texts, killed, out, shard_size=64, fingerprint=fingerprint)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard_00000.npy", "shard_00001.npy"]

    resumed = _Killable(encoder)
    vectors = encode_in_shards(texts, resumed, out, shard_size=64, fingerprint=fingerprint)
    assert resumed.calls == [64, 8]  # only the shards the killed run had not finished
    assert "resuming: 2 of 4 shards already encoded" in capsys.readouterr().out
    assert len(vectors) == 200 and vectors.dim == encoder.dim
    whole = encoder.encode(texts)
    np.testing.assert_allclose(vectors.read(0, 200), whole, atol=1e-5)
    np.testing.assert_allclose(vectors.read(60, 130), whole[60:130], atol=1e-5)  # across shard boundaries
    rows = np.array([0, 63, 64, 150, 199])
    np.testing.assert_array_equal(vectors.take(rows), vectors.read(0, 200)[rows])

    again = _Killable(encoder)
    encode_in_shards(texts, again, out, shard_size=64, fingerprint=fingerprint)
    assert again.calls == []


def test_vectors_of_another_build_or_a_short_shard_are_encoded_again(encoder, texts, tmp_path, capsys):
    out = tmp_path / "vectors"
    encode_in_shards(texts, _Killable(encoder), out, shard_size=64, fingerprint={"encoder": "a", "max_length": 64})
    np.save(out / "shard_00001.npy", np.zeros((10, encoder.dim), np.float32))  # not the rows that shard holds
    short = _Killable(encoder)
    vectors = encode_in_shards(texts, short, out, shard_size=64, fingerprint={"encoder": "a", "max_length": 64})
    assert short.calls == [64]
    np.testing.assert_allclose(vectors.read(64, 128), encoder.encode(texts[64:128]), atol=1e-5)

    changed = _Killable(encoder)
    encode_in_shards(texts, changed, out, shard_size=64, fingerprint={"encoder": "a", "max_length": 32})
    assert changed.calls == [64, 64, 64, 8]
    assert "differs in max_length" in capsys.readouterr().out
    with pytest.raises(ValueError, match="shard_size"):
        encode_in_shards(texts, changed, out, shard_size=0, fingerprint={})


def test_sharded_build_equals_one_shard_and_kept_vectors_build_another_kind(
    small_corpus, tiny_bert_encoder, dev_questions, tmp_path, capsys
):
    questions = [q["question"] for q in dev_questions[:30]]
    one = load_retriever(build_index(small_corpus, tmp_path / "one", str(tiny_bert_encoder), show_progress=False))
    out = build_index(
        small_corpus,
        tmp_path / "sharded",
        str(tiny_bert_encoder),
        shard_size=64,
        keep_vectors=True,
        show_progress=False,
    )
    assert sorted(p.name for p in (out / "vectors").glob("shard_*.npy")) == [f"shard_0000{i}.npy" for i in range(4)]
    sharded = load_retriever(out)
    exact = one.search(questions, 5)
    for got, want in zip(sharded.search(questions, 5), exact, strict=True):
        assert [d["id"] for d, _ in got] == [d["id"] for d, _ in want]
        assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(got, want, strict=True))

    capsys.readouterr()
    build_index(small_corpus, out, str(tiny_bert_encoder), faiss_index="IVF4,SQ8", shard_size=64)
    printed = capsys.readouterr()
    assert "resuming: 4 of 4 shards already encoded" in printed.out  # nothing encoded again
    assert "training the index on 200 of 200 vectors" in printed.out
    assert not (out / "vectors").exists()  # not kept this time
    assert json.loads((out / "meta.json").read_text())["faiss_index"] == "IVF4,SQ8"
    hits = [{d["id"] for d, _ in row} for row in load_retriever(out).search(questions, 5)]
    recall = np.mean([len(h & {d["id"] for d, _ in row}) / 5 for h, row in zip(hits, exact, strict=True)])
    assert recall >= 0.8, recall


def test_build_options_are_checked_before_any_work(small_corpus, tmp_path):
    with pytest.raises(ValueError, match="shard_size"):
        build_index(small_corpus, tmp_path / "x", "some/encoder", shard_size=0)
    with pytest.raises(ValueError, match="need the dense encoder"):
        build_index(small_corpus, tmp_path / "x", "bm25", vectors_from=tmp_path / "e5_Flat.index")
    with pytest.raises(FileNotFoundError, match="e5_Flat.index"):
        build_index(small_corpus, tmp_path / "x", "some/encoder", vectors_from=tmp_path / "e5_Flat.index")
    assert not (tmp_path / "x").exists()


def test_faiss_gpus_asked_of_a_cpu_only_faiss_fail_clearly(dense_indexes):
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("faiss sees a GPU here (covered by test_faiss_gpus.py)")
    with pytest.raises(ValueError, match=r"faiss_gpus=1: faiss sees 0 GPU\(s\)"):
        load_retriever(dense_indexes["flat"], device="cpu", faiss_gpus=1)
    with pytest.raises(ValueError, match="HNSW index is searched on the CPU"):
        load_retriever(dense_indexes["hnsw"], device="cpu", faiss_gpus=1)
    assert load_retriever(dense_indexes["flat"], device="cpu").faiss_gpus == 0
