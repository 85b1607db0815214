"""The Serper client's pieces on their own: response parsing, Retry-After, the limiter, the cache, the key.

The limiter and the cache are library objects inside the client, so they are checked through ``search``
against the fake Serper: what reaches the provider, and when.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from pathlib import Path

import diskcache
import pytest

from env_servers.websearch.serper import (
    MissingAPIKeyError,
    SearchResult,
    SerperClient,
    SerperResponseError,
    parse_response,
    parse_retry_after,
)
from tests.env_servers.websearch.fake_serper import API_KEY, FakeSerper, serper_body


def test_parse_organic_rows() -> None:
    data = {
        "organic": [
            {"title": "A\n title", "link": "https://a.example/", "snippet": "text  one", "position": 1},
            {"title": "B", "link": "https://b.example/"},  # Serper omits snippets for some pages
        ]
    }
    assert parse_response(data) == [
        SearchResult(title="A title", snippet="text one", url="https://a.example/", position=1),
        SearchResult(title="B", snippet="", url="https://b.example/", position=2),
    ]
    assert parse_response(data)[0].contents() == '"A title"\ntext one (https://a.example/)'
    assert parse_response(data)[1].contents() == '"B"\n(https://b.example/)'
    assert parse_response({"organic": []}) == []
    assert len(parse_response(serper_body("q", 10), num_results=4)) == 4


def test_answer_box_first_then_cut_to_num_results() -> None:
    data = serper_body("q", 10, answer_box=True)
    results = parse_response(data, num_results=10)
    assert results[0] == SearchResult("q answer", "330 m", "https://example.org/answer", 0) and len(results) == 10
    assert [r.position for r in results[1:]] == list(range(1, 10))
    assert parse_response(data, include_answer_box=False)[0].position == 1
    textless = {"organic": [], "answerBox": {"title": "t", "link": "https://x.example/"}}
    assert parse_response(textless) == []  # an answer box without text is skipped, not an error
    both = {"organic": [], "answerBox": {"answer": "42", "snippet": "the answer"}}
    assert parse_response(both)[0].contents() == '"Answer"\n42 — the answer'


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ([], "expected a JSON object, got list"),
        ({"credits": 1}, "no `organic` results list"),
        ({"organic": "x"}, "`organic` is a str"),
        ({"organic": [3]}, "organic[0] is a int"),
        ({"organic": [{"link": "https://x.example/"}]}, "organic[0].title should be a string, got missing"),
        ({"organic": [{"title": "t", "link": 5}]}, "organic[0].link should be a string, got a int"),
        ({"organic": [{"title": "t", "link": "l", "snippet": ["s"]}]}, "organic[0].snippet should be a string"),
        ({"organic": [{"title": "t", "link": "l", "position": True}]}, "organic[0].position should be an integer"),
    ],
)
def test_malformed_responses_raise(data: object, words: str) -> None:
    with pytest.raises(SerperResponseError, match="malformed Serper response") as info:
        parse_response(data)
    assert words in str(info.value)


def test_retry_after_values() -> None:
    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.25") == 0.25 and parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None and parse_retry_after("inf") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (parse_retry_after(later) or 0) <= 31


def search_all(client: SerperClient, queries: list[str]) -> float:
    """Search ``queries`` concurrently in a fresh event loop, closing the client after; the seconds it took."""

    async def run() -> float:
        start = time.monotonic()
        try:
            await asyncio.gather(*(client.search(q) for q in queries))
        finally:
            await client.aclose()
        return time.monotonic() - start

    return asyncio.run(run())


def search_one(client: SerperClient, query: str) -> list[SearchResult]:
    async def run() -> list[SearchResult]:
        try:
            return await client.search(query)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_rate_limit_spaces_requests_and_none_or_zero_is_unlimited(fake: FakeSerper) -> None:
    limited = SerperClient(API_KEY, base_url=fake.url, rate_limit_per_s=50.0)
    assert search_all(limited, [f"limited {i}" for i in range(6)]) >= 5 / 50 - 0.005  # timers may fire a tick early
    assert fake.count == 6
    for rate in (None, 0):
        fake.reset()
        unlimited = SerperClient(API_KEY, base_url=fake.url, rate_limit_per_s=rate)
        search_all(unlimited, [f"unlimited {rate} {i}" for i in range(100)])
        arrivals = sorted(s.time for s in fake.seen)
        assert len(arrivals) == 100 and arrivals[-1] - arrivals[0] < 0.5  # all sent at once, none spaced
    with pytest.raises(ValueError, match="rate limit"):
        SerperClient(API_KEY, rate_limit_per_s=-1)
    with pytest.raises(ValueError, match="rate limit"):
        SerperClient(API_KEY, rate_limit_per_s=float("nan"))


@pytest.mark.parametrize(("rate", "queued"), [(0, False), (20.0, False), (5.0, True)])
def test_a_429_pauses_every_request_of_the_client(
    fake: FakeSerper, caplog: pytest.LogCaptureFixture, rate: float, queued: bool
) -> None:
    """A 429 holds back the other searches too, not just the retry of the request that got it: those that
    start after it and, with ``queued``, one already waiting for its slot in the limiter when it came."""
    caplog.set_level(logging.WARNING, logger="env_servers.websearch.serper")
    client = SerperClient(API_KEY, base_url=fake.url, rate_limit_per_s=rate, max_retries=1, max_retry_after_s=5.0)
    fake.then(("429", "0.3"))

    async def retry_logged() -> None:  # the client has taken the 429 in: it logs the retry
        while not any("rate-limited (HTTP 429); retry 1/1" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.005)

    async def run() -> None:
        first = asyncio.create_task(client.search("first"))
        if queued:
            await asyncio.sleep(0)  # the first search takes its slot; the second queues for the next, 0.2 s on
        else:
            await asyncio.wait_for(retry_logged(), timeout=5)
        await client.search("second")
        await first
        await client.aclose()

    asyncio.run(run())
    assert fake.queries()[0] == "first" and sorted(fake.queries()) == ["first", "first", "second"]
    second = next(s.time for s in fake.seen if s.body["q"] == "second")
    assert second - fake.seen[0].time >= 0.3 - 0.005  # the pause counts from the 429, which came after that


def test_missing_or_blank_key_is_refused_by_name() -> None:
    for key in ("", "   "):
        with pytest.raises(MissingAPIKeyError, match="SERPER_API_KEY"):
            SerperClient(key)
    assert isinstance(MissingAPIKeyError("x"), ValueError)  # the CLI reports ValueErrors as usage errors
    with pytest.raises(ValueError, match="max_retries"):
        SerperClient(API_KEY, max_retries=-1)


def test_repr_and_redact_hide_the_key(tmp_path: Path) -> None:
    client = SerperClient(API_KEY, cache_dir=tmp_path)
    assert API_KEY not in repr(client) and "SerperClient(" in repr(client)
    assert client.redact(f"headers: X-API-KEY={API_KEY}") == "headers: X-API-KEY=[redacted]"


def test_cache_key_is_the_query_and_num(fake: FakeSerper, tmp_path: Path) -> None:
    cache_dir = tmp_path / "nested" / "dir"

    def search(query: str, num: int = 10) -> list[SearchResult]:  # a new client each time: only the disk is shared
        client = SerperClient(API_KEY, base_url=fake.url, rate_limit_per_s=None, cache_dir=cache_dir, num_results=num)
        return search_one(client, query)

    first = search("q")
    assert cache_dir.is_dir() and fake.count == 1  # created, nested directories included
    assert search("q") == first and fake.count == 1  # the same (query, num): a hit
    assert len(search("q", num=5)) == 5 and fake.count == 2  # the number of results is part of the key
    search("q ")
    assert fake.count == 3  # so is every character of the query
    assert len(search("q", num=5)) == 5 and search("q ") and fake.count == 3
    with diskcache.Cache(cache_dir) as stored:
        assert len(stored) == 3


def test_unreadable_or_unusable_cache_entries_are_misses(fake: FakeSerper, tmp_path: Path) -> None:
    client = SerperClient(API_KEY, base_url=fake.url, rate_limit_per_s=None, cache_dir=tmp_path)
    assert len(search_one(client, "q")) == 10 and fake.count == 1
    with diskcache.Cache(tmp_path) as raw:  # the default Disk stores these bytes as they are: not the client's JSON
        (key,) = list(raw)
        raw.set(key, b'{"response": {"organic": [')
    assert len(search_one(client, "q")) == 10 and fake.count == 2
    assert len(search_one(client, "q")) == 10 and fake.count == 2  # rewritten by the fetch
    with diskcache.Cache(tmp_path, disk=diskcache.JSONDisk) as stored:  # readable, but not a Serper response
        (key,) = list(stored)
        stored.set(key, {"query": "q", "num": 10, "response": {"organic": "x"}})
    assert len(search_one(client, "q")) == 10 and fake.count == 3
    assert len(search_one(client, "q")) == 10 and fake.count == 3
