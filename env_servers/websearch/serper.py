"""Async client of Serper (google.serper.dev): Google results as ``SearchResult`` rows.

RL rollouts fire thousands of searches, often the same one many times (every sample of a GRPO group
tends to open with the same query), and each API call costs money and counts against a rate limit. So:

- an on-disk cache keyed by a hash of (query, num) stores each valid response; a hit makes no request,
  and concurrent requests for the same query share one API call;
- one rate limiter spaces every request this client makes (retries included), and a 429 pauses it;
- 429, 408, 5xx, timeouts and connection errors are retried with exponential backoff and jitter
  (``Retry-After`` honoured, capped); 400/401/403 and other 4xx are not, since retrying cannot fix them;
- every failure is a ``SerperError`` whose message is safe to send to clients: the API key is never put in
  a message, a log line or a ``repr`` (and any text echoed by the provider is scrubbed of it).

Serper protocol: ``POST {base_url}/search`` with headers ``X-API-KEY`` and ``Content-Type: application/json``
and body ``{"q": query, "num": 10}``; the response holds ``organic: [{title, link, snippet, position}]``
and, for some queries, an ``answerBox`` (put first when ``include_answer_box``) and a ``knowledgeGraph``
(ignored: it describes an entity, not the query's answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import hashlib
import json
import logging
import math
import os
import random
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

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


class RateLimiter:
    """Starts callers at least ``1 / rate_per_s`` apart, in arrival order (a token bucket of burst 1).

    Each caller reserves its slot under a thread lock and then sleeps until it, so no ``asyncio.Lock`` is
    needed (which would tie the limiter to one event loop) and concurrent callers never bunch up.
    """

    def __init__(self, rate_per_s: float | None) -> None:
        if rate_per_s is not None and (math.isnan(rate_per_s) or rate_per_s < 0):
            raise ValueError(f"rate limit must be >= 0 requests/s (0 or None: unlimited), got {rate_per_s}")
        self.interval = 1.0 / rate_per_s if rate_per_s else 0.0
        self._next = 0.0  # time.monotonic() of the next free slot
        self._lock = threading.Lock()

    async def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        while (wait := slot - time.monotonic()) > 0:
            await asyncio.sleep(wait)

    def pause(self, seconds: float) -> None:
        """Hold back every caller's next request by ``seconds`` (the provider answered 429)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


class DiskCache:
    """Valid Serper responses, one JSON file per key under ``root/<key[:2]>/<key>.json``.

    Entries are written to a temporary file and renamed into place (atomic on POSIX, NFS included), so
    concurrent requests and several servers sharing the directory never see a torn entry; an unreadable
    entry is a miss. One file per key rather than sqlite: no locking, which shared cluster filesystems
    handle badly, and entries are easy to inspect or delete.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(query: str, num: int) -> str:
        blob = json.dumps({"format": CACHE_FORMAT, "q": query, "num": num}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self.path(key), encoding="utf-8") as f:
                entry = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cache entry %s: %s", self.path(key), exc)
            return None
        response = entry.get("response") if isinstance(entry, dict) else None
        return response if isinstance(response, dict) else None

    def put(self, key: str, query: str, num: int, response: dict[str, Any]) -> None:
        path = self.path(key)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"query": query, "num": num, "time": time.time(), "response": response}, f)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


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


def _retry_after(value: str | None) -> float | None:
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

    Safe to share between concurrent requests of one event loop; the HTTP connection pool is created on
    first use in the running loop (and anew if used from another loop).
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
        self._api_key = api_key.strip()
        self.base_url = base_url.rstrip("/")
        self.endpoint = f"{self.base_url}/search"
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.num_results = num_results
        self.include_answer_box = include_answer_box
        self.limiter = RateLimiter(rate_limit_per_s)
        self.cache = DiskCache(cache_dir) if cache_dir is not None else None
        self.stats = {"requests": 0, "cache_hits": 0, "shared": 0}
        self._http: httpx.AsyncClient | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self._inflight: dict[str, asyncio.Task[dict[str, Any]]] = {}

    def __repr__(self) -> str:  # no key, on purpose
        cache = self.cache.root if self.cache else None
        return f"SerperClient(base_url={self.base_url!r}, num_results={self.num_results}, cache_dir={cache!r})"

    def redact(self, text: str) -> str:
        """``text`` with the API key replaced: for anything that may echo what was sent."""
        return text.replace(self._api_key, "[redacted]")

    async def search(self, query: str) -> list[SearchResult]:
        """The top ``num_results`` results for ``query``: from the cache if there, else from Serper."""
        key = DiskCache.key(query, self.num_results)
        if self.cache is not None:
            cached = await asyncio.to_thread(self.cache.get, key)
            if cached is not None:
                try:
                    results = self._parse(cached)
                except SerperResponseError:
                    log.warning("ignoring an unusable cache entry %s", self.cache.path(key))
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
        loop, self._http_loop = self._http_loop, None
        if http is not None and loop is asyncio.get_running_loop():
            await http.aclose()

    def _parse(self, data: Any) -> list[SearchResult]:
        return parse_response(data, num_results=self.num_results, include_answer_box=self.include_answer_box)

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._http_loop is not loop:
            self._http = httpx.AsyncClient(timeout=self.timeout_s)
            self._http_loop = loop
        return self._http

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
            try:
                await asyncio.to_thread(self.cache.put, key, query, self.num_results, data)
            except OSError as exc:
                log.warning("could not write the search cache under %s: %s", self.cache.root, exc)
        return data

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        base = self.backoff_s * 2**attempt
        return min(self.max_backoff_s, base + random.uniform(0, base / 2))  # jitter: retries do not sync up

    async def _fetch(self, query: str) -> dict[str, Any]:
        body = {"q": query, "num": self.num_results}
        headers = {"X-API-KEY": self._api_key, "Content-Type": "application/json"}
        attempts = self.max_retries + 1
        problem = "no attempt made"
        for attempt in range(attempts):
            await self.limiter.acquire()
            self.stats["requests"] += 1
            retry_after: float | None = None
            rate_limited = False
            try:
                response = await self._client().post(self.endpoint, json=body, headers=headers)
            except httpx.TimeoutException:
                problem = f"timed out after {self.timeout_s:g} s"
            except httpx.TransportError as exc:  # exception text can name the request; only its type is kept
                problem = f"connection failed ({type(exc).__name__})"
            else:
                status = response.status_code
                if status == 200:
                    return self._decode(response)
                if status in (401, 403):
                    raise SerperAuthError(f"Serper rejected the API key (HTTP {status}): check {API_KEY_ENV}")
                if status not in RETRIED_STATUSES and status < 500:
                    raise SerperRequestError(f"Serper refused the request (HTTP {status}): {self._excerpt(response)}")
                rate_limited = status == 429
                problem = "rate-limited (HTTP 429)" if rate_limited else f"HTTP {status}"
                retry_after = _retry_after(response.headers.get("retry-after"))
            if attempt + 1 == attempts:
                break
            delay = self._backoff(attempt, retry_after)
            if rate_limited:
                self.limiter.pause(delay)  # everyone backs off, not just this request
            log.warning("Serper %s; retry %d/%d in %.2f s", problem, attempt + 1, self.max_retries, delay)
            await asyncio.sleep(delay)
        raise SerperUnavailableError(f"Serper unavailable: {problem} (gave up after {attempts} attempts)")

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
