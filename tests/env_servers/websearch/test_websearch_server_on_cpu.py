"""The websearch server over real HTTP: Search-R1's /retrieve contract answered from a fake Serper on loopback."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import diskcache
import httpx
import pytest

from env_servers.websearch.serper import SerperClient
from tests.env_servers.websearch.fake_serper import API_KEY, FakeSerper, Running, expected_contents
from verl_mem1.rollout.environment import RetrievalEnvironment

Q = "how tall is the eiffel tower"


def post(run: Running, body: Any, timeout: float = 10.0) -> httpx.Response:
    return httpx.post(f"{run.url}/retrieve", json=body, timeout=timeout)


def contents(response: httpx.Response) -> list[list[str]]:
    assert response.status_code == 200, response.text
    return [[item["document"]["contents"] for item in row] for row in response.json()["result"]]


def test_health_names_the_provider_and_costs_no_search(websearch, fake: FakeSerper) -> None:
    run = websearch()
    r = httpx.get(f"{run.url}/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "provider": "serper"}
    assert fake.count == 0


def test_results_format_scores_and_protocol(websearch, fake: FakeSerper) -> None:
    run = websearch()
    r = post(run, {"queries": [Q], "topk": 10, "return_scores": True})
    (row,) = r.json()["result"]
    assert len(row) == 10
    for i, item in enumerate(row, start=1):
        assert set(item) == {"document", "score"} and set(item["document"]) == {"id", "contents"}
        assert item["document"]["contents"] == expected_contents(Q, i)
        assert item["document"]["id"] == f"https://example.org/how-tall-is-the-eiffel-tower/{i}"
        assert item["score"] == pytest.approx(1.0 / i)
    scores = [item["score"] for item in row]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 10
    assert row[0]["document"]["contents"].split("\n")[0] == f'"{Q} - Result 1 | Example"'
    (seen,) = fake.seen
    assert seen.body == {"q": Q, "num": 10} and seen.key == API_KEY


def test_topk_cut_default_topk_and_bare_documents(websearch) -> None:
    run = websearch()
    ten = contents(post(run, {"queries": [Q], "topk": 10, "return_scores": True}))[0]
    assert contents(post(run, {"queries": [Q], "topk": 4, "return_scores": True}))[0] == ten[:4]
    assert contents(post(run, {"queries": [Q], "return_scores": True}))[0] == ten[:3]  # Search-R1's default topk
    bare = post(run, {"queries": [Q], "topk": 2}).json()["result"]
    assert bare == [
        [
            {"id": f"https://example.org/how-tall-is-the-eiffel-tower/{i}", "contents": c}
            for i, c in [(1, ten[0]), (2, ten[1])]
        ]
    ]


def test_single_query_and_top_k_alias(websearch) -> None:
    run = websearch()
    single = post(run, {"query": Q, "top_k": 5, "return_scores": True})
    batched = post(run, {"queries": [Q], "topk": 5, "return_scores": True})
    assert single.json() == batched.json() and len(single.json()["result"][0]) == 5


def test_batched_queries_run_concurrently_and_keep_order(websearch, fake: FakeSerper) -> None:
    run = websearch()
    queries = [f"question number {i}" for i in range(4)]
    fake.then(default=("sleep", 0.4))
    start = time.monotonic()
    rows = contents(post(run, {"queries": queries, "topk": 2, "return_scores": True}))
    elapsed = time.monotonic() - start
    assert [row[0] for row in rows] == [expected_contents(q, 1) for q in queries]
    assert sorted(fake.queries()) == sorted(queries)
    assert elapsed < 4 * 0.4 - 0.3, f"batch took {elapsed:.2f} s: searches were not concurrent"


def test_duplicate_queries_in_flight_share_one_request(websearch, fake: FakeSerper) -> None:
    run = websearch()
    fake.then(default=("sleep", 0.2))
    rows = contents(post(run, {"queries": [Q] * 5, "topk": 3, "return_scores": True}))
    assert len(rows) == 5 and all(row == rows[0] for row in rows)
    assert fake.count == 1


def test_answer_box_comes_first(websearch, fake: FakeSerper) -> None:
    run = websearch()
    fake.then("answer_box")
    (row,) = post(run, {"queries": [Q], "topk": 10, "return_scores": True}).json()["result"]
    assert row[0]["document"]["contents"] == f'"{Q} answer"\n330 m (https://example.org/answer)'
    assert row[0]["score"] == 1.0
    assert [item["document"]["contents"] for item in row[1:]] == [expected_contents(Q, i) for i in range(1, 10)]


def test_rejected_key_is_a_502_that_says_so_and_the_server_keeps_serving(websearch, fake: FakeSerper) -> None:
    bad = websearch(api_key="wrong-key-123")
    r = post(bad, {"queries": [Q]})
    assert r.status_code == 502
    assert "rejected" in r.json()["detail"] and "SERPER_API_KEY" in r.json()["detail"]
    assert fake.count == 1  # no retries: a rejected key stays rejected
    assert httpx.get(f"{bad.url}/health").status_code == 200

    run = websearch()
    fake.then("401")
    r = post(run, {"queries": [Q]})
    assert r.status_code == 502 and "rejected the API key (HTTP 401)" in r.json()["detail"]
    assert len(contents(post(run, {"queries": [Q], "return_scores": True}))[0]) == 3  # next request succeeds


@pytest.mark.parametrize("failures", [["429", "429"], ["500", "503"], ["429", "500", "429"]])
def test_transient_errors_are_retried(websearch, fake: FakeSerper, failures: list[str]) -> None:
    run = websearch(max_retries=3)
    fake.then(*failures)
    assert contents(post(run, {"queries": [Q], "return_scores": True}))[0][0] == expected_contents(Q, 1)
    assert fake.count == len(failures) + 1


def test_retry_after_is_honoured_and_capped(websearch, fake: FakeSerper) -> None:
    run = websearch(max_retries=2, max_retry_after_s=1.0)
    fake.then(("429", "0.3"))
    start = time.monotonic()
    assert post(run, {"queries": [Q]}).status_code == 200
    assert time.monotonic() - start >= 0.3 and fake.count == 2

    capped = websearch(max_retries=1, max_retry_after_s=0.05)
    fake.then(("429", "3600"))
    start = time.monotonic()
    assert post(capped, {"queries": ["another query"]}).status_code == 200
    assert time.monotonic() - start < 3.0 and fake.count == 4


def test_rate_limited_past_the_retries_is_a_502(websearch, fake: FakeSerper) -> None:
    run = websearch(max_retries=2)
    fake.then(default="429")
    r = post(run, {"queries": [Q]})
    assert r.status_code == 502
    assert "rate-limited (HTTP 429)" in r.json()["detail"] and "3 attempts" in r.json()["detail"]
    assert fake.count == 3
    fake.then(default="ok")
    assert post(run, {"queries": [Q]}).status_code == 200


def test_timeouts_are_retried_then_a_502(websearch, fake: FakeSerper) -> None:
    run = websearch(timeout_s=0.3, max_retries=1)
    fake.then(("sleep", 0.9))
    assert post(run, {"queries": [Q]}).status_code == 200  # timed out once, then answered
    assert fake.count == 2

    fake.reset()
    fake.then(default=("sleep", 0.9))
    r = post(run, {"queries": ["a slow query"]})
    assert r.status_code == 502 and "timed out after 0.3 s" in r.json()["detail"]
    assert fake.count == 2
    assert httpx.get(f"{run.url}/health").status_code == 200


def test_connection_refused_is_retried_then_a_502(websearch, fake: FakeSerper) -> None:
    from env_servers.background import free_port

    run = websearch(base_url=f"http://127.0.0.1:{free_port()}", max_retries=2)
    r = post(run, {"queries": [Q]})
    assert r.status_code == 502 and "connection failed" in r.json()["detail"]
    assert run.client.stats["requests"] == 3


@pytest.mark.parametrize("behaviour", ["not_json", "no_organic", "wrong_types", "organic_not_list"])
def test_malformed_responses_are_a_502_and_not_retried(websearch, fake: FakeSerper, behaviour: str) -> None:
    run = websearch()
    fake.then(behaviour)
    r = post(run, {"queries": [Q]})
    assert r.status_code == 502 and "malformed Serper response" in r.json()["detail"]
    assert fake.count == 1
    assert post(run, {"queries": [Q]}).status_code == 200  # still serving, and the bad answer was not kept


def test_bad_request_from_serper_is_not_retried(websearch, fake: FakeSerper) -> None:
    run = websearch()
    fake.then("400")
    r = post(run, {"queries": [Q]})
    assert r.status_code == 502 and "refused the request (HTTP 400)" in r.json()["detail"]
    assert fake.count == 1


def test_cache_hits_make_no_request_and_survive_a_restart(websearch, fake: FakeSerper, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = websearch(cache_dir=cache)
    body = {"queries": [Q], "topk": 10, "return_scores": True}
    want = post(first, body).json()
    assert fake.count == 1
    assert post(first, body).json() == want and post(first, {"query": Q, "topk": 2}).status_code == 200
    assert fake.count == 1 and first.client.stats["cache_hits"] == 2
    first.server.stop()

    second = websearch(cache_dir=cache)  # a new client and server over the same directory
    assert post(second, body).json() == want
    assert fake.count == 1
    post(second, {"queries": [Q, "a new query"]})
    assert fake.count == 2 and fake.queries() == [Q, "a new query"]
    with diskcache.Cache(cache) as stored:
        assert len(stored) == 2


def test_failures_are_not_cached(websearch, fake: FakeSerper, tmp_path: Path) -> None:
    run = websearch(cache_dir=tmp_path)
    fake.then("no_organic")
    assert post(run, {"queries": [Q]}).status_code == 502
    assert post(run, {"queries": [Q]}).status_code == 200
    assert post(run, {"queries": [Q]}).status_code == 200
    assert fake.count == 2


def test_rate_limit_spaces_requests(websearch, fake: FakeSerper) -> None:
    rate, n = 25.0, 5
    run = websearch(rate_limit_per_s=rate)
    start = time.monotonic()
    rows = contents(post(run, {"queries": [f"query {i}" for i in range(n)], "return_scores": True}))
    elapsed = time.monotonic() - start
    assert len(rows) == n and fake.count == n
    assert elapsed >= (n - 1) / rate
    arrivals = sorted(s.time for s in fake.seen)
    # Spaced at the provider too (one interval of slack for the first request's transit under load).
    assert arrivals[-1] - arrivals[0] >= (n - 2) / rate


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"queries": []}, 422, "empty"),
        ({"query": "   "}, 422, "query is empty"),
        ({"queries": [Q, ""]}, 422, "queries[1] is empty"),
        ({"queries": [Q], "topk": 0}, 422, "between 1 and 10"),
        ({"queries": [Q], "topk": 11}, 422, "between 1 and 10"),
        ({"queries": [f"q{i}" for i in range(33)]}, 422, "too many queries: 33 > 32"),
        ({"queries": [Q], "query": Q}, 422, "not both"),
        ({}, 422, "missing"),
        ({"queries": "not a list"}, 422, "queries"),
    ],
)
def test_bad_requests_are_4xx_and_reach_no_provider(
    websearch, fake: FakeSerper, body: dict[str, Any], status: int, words: str
) -> None:
    run = websearch()
    r = post(run, body)
    assert r.status_code == status and words in r.json()["detail"]
    malformed = httpx.post(
        f"{run.url}/retrieve", content=b"{not json", headers={"Content-Type": "application/json"}, timeout=5
    )
    assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["detail"]
    assert fake.count == 0


def test_the_key_never_appears_in_logs_or_responses(
    websearch, fake: FakeSerper, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "env_servers", "uvicorn", "uvicorn.error", "fastapi"):
        caplog.set_level(logging.DEBUG, logger=name)
    bad_key = "wrong-sk-live-0a9b8c7d"
    run = websearch(max_retries=1, timeout_s=0.3)
    bad = websearch(api_key=bad_key)
    texts = [repr(run.client), repr(bad.client)]
    fake.then("echo_key", "401", "429", "429", "500", "500", ("sleep", 0.9), ("sleep", 0.9), "not_json", "ok")
    for _ in range(7):  # six failures (each retried once where retried at all), then a success
        texts.append(post(run, {"queries": [Q]}).text)
    texts.append(post(bad, {"queries": [Q]}).text)
    texts.append(post(bad, {"queries": [Q, "x"]}).text)
    assert any("[redacted]" in t for t in texts)  # the echoed key was scrubbed, not passed through
    assert sum('"result"' in t for t in texts) == 1 and sum("web search failed" in t for t in texts) == 8
    out, err = capfd.readouterr()
    assert caplog.records, "nothing was logged: the check would be vacuous"
    for key in (API_KEY, bad_key):
        assert key not in caplog.text and key not in out and key not in err
        assert all(key not in t for t in texts)
        assert all(key not in str(r.args) for r in caplog.records)


def test_retrieval_environment_client_works_unchanged(websearch) -> None:
    run = websearch()

    async def observe() -> str:
        env = RetrievalEnvironment(run.url, topk=3)
        try:
            return await env.observe(Q)
        finally:
            await env.aclose()

    observation = asyncio.run(observe())
    lines = observation.splitlines()
    assert len(lines) == 3
    assert lines[0] == (
        f'Doc 1(Title: "{Q} - Result 1 | Example") Snippet 1 about {Q}. It has line breaks and extra spaces. '
        "(https://example.org/how-tall-is-the-eiffel-tower/1)"
    )
    assert lines[2].startswith(f'Doc 3(Title: "{Q} - Result 3 | Example")')


def test_client_search_directly(fake: FakeSerper, tmp_path: Path) -> None:
    """The client on its own, across two event loops (the connection pool is per loop)."""
    client = SerperClient(API_KEY, base_url=fake.url, rate_limit_per_s=None, cache_dir=tmp_path, num_results=5)
    results = asyncio.run(client.search(Q))
    assert [r.position for r in results] == [1, 2, 3, 4, 5] and results[0].url.endswith("/1")
    assert fake.seen[0].body == {"q": Q, "num": 5}
    assert asyncio.run(client.search("second")) != results and fake.count == 2
    assert asyncio.run(client.search(Q)) == results and fake.count == 2
