"""The Serper client's pieces on their own: response parsing, Retry-After, the limiter, the cache, the key."""

from __future__ import annotations

import asyncio
import email.utils
import time
from pathlib import Path

import pytest

from env_servers.websearch.serper import (
    DiskCache,
    MissingAPIKeyError,
    RateLimiter,
    SearchResult,
    SerperClient,
    SerperResponseError,
    _retry_after,
    parse_response,
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
    assert _retry_after("2") == 2.0 and _retry_after("0.25") == 0.25 and _retry_after("-3") == 0.0
    assert _retry_after(None) is None and _retry_after("soon") is None and _retry_after("inf") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (_retry_after(later) or 0) <= 31


def test_rate_limiter_spaces_callers_and_pauses() -> None:
    async def run(limiter: RateLimiter, n: int) -> float:
        start = time.monotonic()
        await asyncio.gather(*(limiter.acquire() for _ in range(n)))
        return time.monotonic() - start

    assert asyncio.run(run(RateLimiter(50.0), 6)) >= 5 / 50 - 0.005  # asyncio timers may fire a tick early
    assert asyncio.run(run(RateLimiter(None), 100)) < 0.5
    paused = RateLimiter(0)
    start = time.monotonic()  # the pause counts from the call, so time it from there
    paused.pause(0.1)
    asyncio.run(paused.acquire())
    assert time.monotonic() - start >= 0.1 - 0.005  # asyncio may wake timers up to its clock resolution early
    with pytest.raises(ValueError, match="rate limit"):
        RateLimiter(-1)


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


def test_cache_key_depends_on_query_and_num(tmp_path: Path) -> None:
    assert DiskCache.key("q", 10) == DiskCache.key("q", 10)
    assert len({DiskCache.key("q", 10), DiskCache.key("q", 5), DiskCache.key("q ", 10)}) == 3
    cache = DiskCache(tmp_path / "nested" / "dir")
    key = DiskCache.key("q", 10)
    assert cache.get(key) is None
    cache.put(key, "q", 10, {"organic": []})
    assert cache.get(key) == {"organic": []}
    assert not list(cache.root.glob("*/.tmp-*"))  # the temporary file was renamed into place


def test_corrupt_cache_entry_is_a_miss(fake: FakeSerper, tmp_path: Path) -> None:
    client = SerperClient(API_KEY, base_url=fake.url, rate_limit_per_s=None, cache_dir=tmp_path)
    path = client.cache.path(DiskCache.key("q", 10))  # type: ignore[union-attr]
    path.parent.mkdir(parents=True)
    path.write_text('{"response": {"organic": [', encoding="utf-8")
    assert len(asyncio.run(client.search("q"))) == 10 and fake.count == 1
    assert len(asyncio.run(client.search("q"))) == 10 and fake.count == 1  # rewritten by the fetch
