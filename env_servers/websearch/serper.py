"""Async client of Serper (google.serper.dev): Google results as ``SearchResult`` rows.

RL rollouts fire thousands of searches, often the same one many times (every sample of a GRPO group
tends to open with the same query), and each API call costs money and counts against a rate limit. So:

- ``diskcache`` keeps each valid response on disk (``diskcache.Cache``: SQLite-indexed, safe across threads
  and processes, JSON values), keyed by a hash of (query, num) and a format version; a hit makes no request,
  and concurrent requests for the same query share one API call;
- ``aiolimiter`` spaces every request this client makes (retries included) with one ``AsyncLimiter``, and a
  429 pauses all of them;
- ``tenacity`` retries 429, 408, 5xx, timeouts and connection errors with exponential backoff and jitter
  (``Retry-After`` honoured, capped); 400/401/403 and other 4xx are not retried, since retrying cannot fix them;
- every failure is a ``SerperError`` whose message is safe to send to clients: the API key is never put in
  a message, a log line or a ``repr`` (and any text echoed by the provider is scrubbed of it).

Serper protocol: ``POST {base_url}/search`` with headers ``X-API-KEY`` and ``Content-Type: application/json``
and body ``{"q": query, "num": 10}``; the response holds ``organic: [{title, link, snippet, position}]``
and, for some queries, an ``answerBox`` (put first when ``include_answer_box``) and a ``knowledgeGraph``
(ignored: it describes an entity, not the query's answer).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import json
import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache
import httpx
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from env_servers.websearch import API_KEY_ENV, DEFAULT_BASE_URL

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # part of the cache key: bump it when the stored entry changes meaning
RETRIED_STATUSES = frozenset({408, 429})  # plus every 5xx


@dataclass(frozen=True)
class SearchResult:
    """One web result. ``position`` is Serper's 1-based organic rank, 0 for the answer box."""

    title: str
    snippet: str
    url: str
    position: int

    def contents(self) -> str:
        """Search-R1's document contents: the quoted title alone on the first line, then the text and URL."""
        text = " ".join(part for part in (self.snippet, f"({self.url})" if self.url else "") if part)
        return f'"{self.title}"\n{text}'


class SerperError(RuntimeError):
    """A search that failed. The message says why and is safe to return to clients (it never holds the key)."""


class MissingAPIKeyError(SerperError, ValueError):
    """No API key was given: nothing can be searched."""


class SerperAuthError(SerperError):
    """Serper rejected the API key (401/403). Not retried: the key will not become valid."""


class SerperRequestError(SerperError):
    """Serper refused the request itself (400, 402, 404, ...: bad parameters, no credits). Not retried."""


class SerperUnavailableError(SerperError):
    """Rate-limited, server errors or network failures on every attempt."""


class SerperResponseError(SerperError):
    """The response is not what the protocol promises (not JSON, no ``organic`` list, wrong types)."""


class _Retryable(Exception):
    """One failed attempt that a retry may fix; ``str()`` says why (never with the key)."""

    def __init__(self, problem: str, *, retry_after: float | None = None, rate_limited: bool = False) -> None:
        super().__init__(problem)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


def _cache_key(query: str, num: int) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, "q": query, "num": num}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _clean(text: str) -> str:
    """Collapse whitespace: a newline in a title would break the ``"Title"\\ntext`` format."""
    return " ".join(text.split())


def _field(item: dict[str, Any], name: str, where: str, *, required: bool) -> str:
    value = item.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise SerperResponseError(f"malformed Serper response: {where}.{name} should be a string, got {got}")
    return _clean(value)


def _answer_box(box: dict[str, Any]) -> SearchResult | None:
    """The answer box as a result, or None when it has no text. Lenient: it is an extra, not the protocol."""
    parts = [_clean(box[k]) for k in ("answer", "snippet") if isinstance(box.get(k), str) and box[k].strip()]
    if not parts:
        return None
    title = _clean(box["title"]) if isinstance(box.get("title"), str) and box["title"].strip() else "Answer"
    link = box["link"] if isinstance(box.get("link"), str) else ""
    return SearchResult(title=title, snippet=" — ".join(parts), url=link, position=0)


def parse_response(data: Any, *, num_results: int = 10, include_answer_box: bool = True) -> list[SearchResult]:
    """Serper's JSON → at most ``num_results`` results, answer box first; raises ``SerperResponseError``."""
    if not isinstance(data, dict):
        raise SerperResponseError(f"malformed Serper response: expected a JSON object, got {type(data).__name__}")
    organic = data.get("organic")
    if organic is None:
        raise SerperResponseError("malformed Serper response: no `organic` results list")
    if not isinstance(organic, list):
        raise SerperResponseError(f"malformed Serper response: `organic` is a {type(organic).__name__}, not a list")
    results: list[SearchResult] = []
    if include_answer_box and isinstance(data.get("answerBox"), dict):
        box = _answer_box(data["answerBox"])
        if box is not None:
            results.append(box)
    for i, item in enumerate(organic):
        where = f"organic[{i}]"
        if not isinstance(item, dict):
            raise SerperResponseError(f"malformed Serper response: {where} is a {type(item).__name__}, not an object")
        position = item.get("position", i + 1)
        if not isinstance(position, int) or isinstance(position, bool):
            raise SerperResponseError(f"malformed Serper response: {where}.position should be an integer")
        results.append(
            SearchResult(
                title=_field(item, "title", where, required=True),
                snippet=_field(item, "snippet", where, required=False),  # Serper omits it for some pages
                url=_field(item, "link", where, required=True),
                position=position,
            )
        )
    return results[:num_results]


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (a number, fractions accepted, or an HTTP date); None when absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


class SerperClient:
    """Searches Serper with caching, rate limiting and retries (see the module docstring).

    Safe to share between concurrent requests of one event loop; the HTTP connection pool and the rate
    limiter (``AsyncLimiter`` binds to one loop) are created on first use in the running loop, and anew if
    used from another loop. A 429 pause is a shared "not before" time, so it holds whatever loop is running.
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 10.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        max_retry_after_s: float = 30.0,
        rate_limit_per_s: float | None = 5.0,
        cache_dir: Path | str | None = None,
        num_results: int = 10,
        include_answer_box: bool = True,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise MissingAPIKeyError(f"no Serper API key: set the {API_KEY_ENV} environment variable")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if backoff_s < 0 or max_backoff_s < 0 or max_retry_after_s < 0:
            raise ValueError("backoff_s, max_backoff_s and max_retry_after_s must be >= 0")
        if not 1 <= num_results <= 100:
            raise ValueError(f"num_results must be between 1 and 100, got {num_results}")
        if rate_limit_per_s is not None and (math.isnan(rate_limit_per_s) or rate_limit_per_s < 0):
            raise ValueError(f"rate limit must be >= 0 requests/s (0 or None: unlimited), got {rate_limit_per_s}")
        self._api_key = api_key.strip()
        self.base_url = base_url.rstrip("/")
        self.endpoint = f"{self.base_url}/search"
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_retry_after_s = max_retry_after_s
        self.num_results = num_results
        self.include_answer_box = include_answer_box
        self.rate_interval_s = 1.0 / rate_limit_per_s if rate_limit_per_s else 0.0
        self._backoff = wait_exponential_jitter(multiplier=backoff_s, max=max_backoff_s, jitter=backoff_s)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        # JSON values, not pickles: nothing read back from a shared directory can run code. No eviction: the
        # cache grows like the query set, as a cache of paid-for answers should.
        self.cache = (
            diskcache.Cache(str(self.cache_dir), disk=diskcache.JSONDisk, eviction_policy="none")
            if self.cache_dir is not None
            else None
        )
        self.stats = {"requests": 0, "cache_hits": 0, "shared": 0}
        self._http: httpx.AsyncClient | None = None
        self._limiter: AsyncLimiter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._not_before = 0.0  # time.monotonic() before which no request starts (a 429 pause)
        self._inflight: dict[str, asyncio.Task[dict[str, Any]]] = {}

    def __repr__(self) -> str:  # no key, on purpose
        return f"SerperClient(base_url={self.base_url!r}, num_results={self.num_results}, cache_dir={self.cache_dir!r})"

    def redact(self, text: str) -> str:
        """``text`` with the API key replaced: for anything that may echo what was sent."""
        return text.replace(self._api_key, "[redacted]")

    async def search(self, query: str) -> list[SearchResult]:
        """The top ``num_results`` results for ``query``: from the cache if there, else from Serper."""
        key = _cache_key(query, self.num_results)
        if self.cache is not None:
            cached = await asyncio.to_thread(self._cached, key)
            if cached is not None:
                try:
                    results = self._parse(cached)
                except SerperResponseError:
                    log.warning("ignoring an unusable entry %s of the search cache %s", key, self.cache_dir)
                else:
                    self.stats["cache_hits"] += 1
                    return results
        return self._parse(await self._shared_fetch(key, query))

    async def open(self) -> None:
        """Create the connection pool now: its TLS setup takes tens of ms, better spent before the first search."""
        self._client()

    async def aclose(self) -> None:
        """Close the connection pool (if it belongs to the running loop; another loop's is just dropped)."""
        http, self._http = self._http, None
        loop, self._loop = self._loop, None
        if http is not None and loop is asyncio.get_running_loop():
            await http.aclose()

    def _parse(self, data: Any) -> list[SearchResult]:
        return parse_response(data, num_results=self.num_results, include_answer_box=self.include_answer_box)

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            self._http = httpx.AsyncClient(timeout=self.timeout_s)
            # A bucket of one request, drained one interval after it: requests start an interval apart.
            self._limiter = AsyncLimiter(1, self.rate_interval_s) if self.rate_interval_s else None
            self._loop = loop
        return self._http

    def _cached(self, key: str) -> dict[str, Any] | None:
        assert self.cache is not None
        try:
            entry = self.cache.get(key)
        except Exception as exc:  # a torn value or database: a miss, never a failed search
            log.warning("ignoring an unreadable entry %s of the search cache %s: %s", key, self.cache_dir, exc)
            return None
        response = entry.get("response") if isinstance(entry, dict) else None
        return response if isinstance(response, dict) else None

    async def _shared_fetch(self, key: str, query: str) -> dict[str, Any]:
        """One API call per distinct query in flight: later callers await the first caller's task."""
        loop = asyncio.get_running_loop()
        task = self._inflight.get(key)
        if task is None or task.get_loop() is not loop:
            task = loop.create_task(self._fetch_and_store(key, query))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        else:
            self.stats["shared"] += 1
        return await asyncio.shield(task)  # one caller giving up must not cancel the others' search

    def _forget(self, key: str, task: asyncio.Task[dict[str, Any]]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody awaited any more is not reported as lost

    async def _fetch_and_store(self, key: str, query: str) -> dict[str, Any]:
        data = await self._fetch(query)
        self._parse(data)  # validate before caching: a malformed response must not stick
        if self.cache is not None:
            entry = {"query": query, "num": self.num_results, "response": data}
            try:
                await asyncio.to_thread(self.cache.set, key, entry)
            except (OSError, sqlite3.Error) as exc:
                log.warning("could not write the search cache under %s: %s", self.cache_dir, exc)
        return data

    async def _fetch(self, query: str) -> dict[str, Any]:
        body = {"q": query, "num": self.num_results}
        headers = {"X-API-KEY": self._api_key, "Content-Type": "application/json"}
        retrying = AsyncRetrying(  # one per call: a Retrying object keeps per-run state
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            return await retrying(self._attempt, body, headers)
        except _Retryable as exc:
            attempts = self.max_retries + 1
            raise SerperUnavailableError(f"Serper unavailable: {exc} (gave up after {attempts} attempts)") from None

    async def _attempt(self, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        await self._pace()
        self.stats["requests"] += 1
        try:
            response = await self._client().post(self.endpoint, json=body, headers=headers)
        except httpx.TimeoutException:
            raise _Retryable(f"timed out after {self.timeout_s:g} s") from None
        except httpx.TransportError as exc:  # exception text can name the request; only its type is kept
            raise _Retryable(f"connection failed ({type(exc).__name__})") from None
        status = response.status_code
        if status == 200:
            return self._decode(response)
        if status in (401, 403):
            raise SerperAuthError(f"Serper rejected the API key (HTTP {status}): check {API_KEY_ENV}")
        if status not in RETRIED_STATUSES and status < 500:
            raise SerperRequestError(f"Serper refused the request (HTTP {status}): {self._excerpt(response)}")
        raise _Retryable(
            "rate-limited (HTTP 429)" if status == 429 else f"HTTP {status}",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            rate_limited=status == 429,
        )

    async def _pace(self) -> None:
        """Wait out any 429 pause, then for a slot of the limiter; again if a pause began while queued."""
        self._client()  # binds the limiter to the running loop
        while True:
            while (wait := self._not_before - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            if self._limiter is not None:
                await self._limiter.acquire()
            if time.monotonic() >= self._not_before:
                return

    def _wait(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: the provider's ``Retry-After`` (capped), else exponential + jitter."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after_s)
        return self._backoff(state)

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.upcoming_sleep
        if isinstance(exc, _Retryable) and exc.rate_limited:
            self._not_before = max(self._not_before, time.monotonic() + delay)  # everyone backs off, not just us
        log.warning("Serper %s; retry %d/%d in %.2f s", exc, state.attempt_number, self.max_retries, delay)

    def _excerpt(self, response: httpx.Response, limit: int = 200) -> str:
        text = self.redact(" ".join(response.text.split()))
        return (text[:limit] + "…") if len(text) > limit else text or "(empty body)"

    def _decode(self, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise SerperResponseError(f"malformed Serper response: not JSON: {self._excerpt(response, 100)}") from None
        if not isinstance(data, dict):
            raise SerperResponseError(f"malformed Serper response: expected a JSON object, got {type(data).__name__}")
        return data
