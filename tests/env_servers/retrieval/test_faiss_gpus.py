"""A dense index split across GPUs (faiss-gpu, ``--faiss-gpus``) searches as it does on the CPU."""

from __future__ import annotations

import pytest

from env_servers.retrieval.index import build_index, load_retriever

faiss = pytest.importorskip("faiss")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0, reason="needs faiss-gpu and a GPU"
    ),
]


def test_index_split_across_gpus_searches_the_same(small_corpus, tiny_bert_encoder, dev_questions, tmp_path):
    out = build_index(small_corpus, tmp_path / "flat", str(tiny_bert_encoder), show_progress=False)
    questions = [q["question"] for q in dev_questions[:30]]
    on_cpu = load_retriever(out, device="cpu", faiss_gpus=0).search(questions, 5)
    for gpus in sorted({1, faiss.get_num_gpus()}):
        on_gpus = load_retriever(out, device="cpu", faiss_gpus=gpus)
        assert on_gpus.faiss_gpus == gpus
        for got, want in zip(on_gpus.search(questions, 5), on_cpu, strict=True):
            assert [d["id"] for d, _ in got] == [d["id"] for d, _ in want]
            assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(got, want, strict=True))
