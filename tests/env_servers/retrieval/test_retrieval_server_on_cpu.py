"""The HTTP contract (Search-R1's /retrieve) against a real uvicorn server on loopback."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from env_servers.background import BackgroundServer
from env_servers.retrieval.index import Retriever, load_retriever
from env_servers.retrieval.server import create_app

QUESTIONS = [
    'The band who released the debut album "Tinted Windows" had their first performance in what city?',
    "Which magazine was started first, Arthur's Magazine or First for Women?",
    "What government position was held by the woman who portrayed Corliss Archer in Kiss and Tell?",
]


def _is_document(item: object) -> bool:
    return isinstance(item, dict) and set(item) == {"id", "contents"} and item["contents"].startswith('"')


def test_health(client: httpx.Client, bm25_retriever: Retriever) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert {k: body[k] for k in ("status", "num_docs", "encoder")} == {
        "status": "ok",
        "num_docs": bm25_retriever.num_docs,
        "encoder": "bm25",
    }
    assert body["batches"] <= body["batched_queries"]  # the batcher's counts (searches, the queries they held)


def test_batched_with_scores(client: httpx.Client, bm25_retriever: Retriever) -> None:
    r = client.post("/retrieve", json={"queries": QUESTIONS, "topk": 5, "return_scores": True})
    assert r.status_code == 200
    result = r.json()["result"]
    assert len(result) == len(QUESTIONS)
    expected = bm25_retriever.search(QUESTIONS, 5)
    for row, want in zip(result, expected, strict=True):
        assert len(row) == 5
        assert all(set(item) == {"document", "score"} and _is_document(item["document"]) for item in row)
        assert [item["document"] for item in row] == [doc for doc, _ in want]
        assert [item["score"] for item in row] == pytest.approx([s for _, s in want])
        scores = [item["score"] for item in row]
        assert scores == sorted(scores, reverse=True)
    assert result[0][0]["document"]["contents"].startswith('"Tinted Windows')


def test_without_scores_items_are_bare_documents(client: httpx.Client) -> None:
    for body in ({"queries": QUESTIONS[:2], "topk": 2, "return_scores": False}, {"queries": QUESTIONS[:2], "topk": 2}):
        result = client.post("/retrieve", json=body).json()["result"]
        assert len(result) == 2 and all(len(row) == 2 and all(_is_document(d) for d in row) for row in result)


def test_single_query_top_k_alias_and_default_topk(client: httpx.Client) -> None:
    batched = client.post("/retrieve", json={"queries": [QUESTIONS[0]], "topk": 4}).json()["result"]
    single = client.post("/retrieve", json={"query": QUESTIONS[0], "top_k": 4}).json()["result"]
    assert single == batched and len(single[0]) == 4
    both = client.post("/retrieve", json={"query": QUESTIONS[0], "topk": 4, "top_k": 4}).json()["result"]
    assert both == batched
    default = client.post("/retrieve", json={"query": QUESTIONS[0]}).json()["result"]
    assert len(default) == 1 and len(default[0]) == 3  # Search-R1's default topk
    # unknown extra fields are ignored, as Search-R1 clients may send some
    assert client.post("/retrieve", json={"query": "x", "session": 1}).status_code == 200


BAD_REQUESTS = [
    ("malformed json", b'{"queries": ["a"', "malformed JSON"),
    ("empty body", b"", "request body is required"),
    ("not an object", b'["a", "b"]', "JSON object"),
    ("neither query nor queries", {"topk": 3}, "missing `queries`"),
    ("both query and queries", {"query": "a", "queries": ["b"]}, "not both"),
    ("empty query string", {"query": ""}, "query is empty"),
    ("blank query in batch", {"queries": ["ok", "   "]}, r"queries\[1\] is empty"),
    ("empty list", {"queries": []}, "`queries` is empty"),
    ("too many queries", {"queries": ["a"] * 257}, "too many queries: 257 > 256"),
    ("query too long", {"query": "a" * 4097}, "too long: 4097 > 4096"),
    ("topk zero", {"query": "a", "topk": 0}, "topk must be between 1 and 100, got 0"),
    ("topk negative", {"query": "a", "top_k": -2}, "got -2"),
    ("topk too large", {"query": "a", "topk": 101}, "got 101"),
    ("topk and top_k disagree", {"query": "a", "topk": 2, "top_k": 3}, "disagree"),
    ("topk not an int", {"query": "a", "topk": "abc"}, "topk: Input should be a valid integer"),
    ("topk float", {"query": "a", "topk": 2.5}, "topk: Input should be a valid integer"),
    ("queries a string", {"queries": "abc"}, "queries: Input should be a valid list"),
    ("query a number", {"query": 5}, "query: Input should be a valid string"),
    ("queries items not strings", {"queries": ["a", 3]}, r"queries\.1: Input should be a valid string"),
    ("return_scores not a bool", {"query": "a", "return_scores": "maybe"}, "return_scores"),
]


@pytest.mark.parametrize(("body", "reason"), [(b, r) for _, b, r in BAD_REQUESTS], ids=[n for n, _, _ in BAD_REQUESTS])
def test_bad_request_gets_4xx_with_reason_and_server_keeps_serving(
    client: httpx.Client, body: object, reason: str
) -> None:
    if isinstance(body, bytes):
        r = client.post("/retrieve", content=body, headers={"content-type": "application/json"})
    else:
        r = client.post("/retrieve", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    assert isinstance(detail, str)
    assert re.search(reason, detail), detail
    ok = client.post("/retrieve", json={"queries": [QUESTIONS[0]], "topk": 1})
    assert ok.status_code == 200 and len(ok.json()["result"][0]) == 1


def test_wrong_method_and_path(client: httpx.Client) -> None:
    assert client.get("/retrieve").status_code == 405
    assert client.post("/search", json={"query": "a"}).status_code == 404
    assert client.get("/health").status_code == 200


def test_limits_are_configurable(bm25_retriever: Retriever) -> None:
    app = create_app(bm25_retriever, max_queries=2, max_topk=4, max_query_chars=10)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url) as c:
        assert c.post("/retrieve", json={"queries": ["a", "b"], "topk": 4}).status_code == 200
        assert c.post("/retrieve", json={"queries": ["a", "b", "c"]}).status_code == 422
        assert c.post("/retrieve", json={"query": "a", "topk": 5}).status_code == 422
        assert c.post("/retrieve", json={"query": "a" * 11}).status_code == 422


def test_dense_index_served(
    dense_indexes: dict[str, Path], small_corpus: Path, wait_healthy: Callable[[str], dict]
) -> None:
    retriever = load_retriever(dense_indexes["flat"], device="cpu")
    doc = json.loads(small_corpus.read_text(encoding="utf-8").splitlines()[7])
    with BackgroundServer(create_app(retriever)) as server:
        url = server.url
        health = wait_healthy(url)
        assert health["num_docs"] == 200 and health["encoder"] == retriever.encoder
        r = httpx.post(f"{url}/retrieve", json={"queries": [doc["contents"], "x"], "topk": 2, "return_scores": True})
    assert r.status_code == 200
    top = r.json()["result"][0][0]
    assert top["document"] == doc and top["score"] == pytest.approx(1.0, abs=1e-4)
