"""Environments the episode loop talks to: a session per episode, one action in, one observation body out.

Retrieval is stateless (every session just searches); WebShop keeps a shopping session per episode on its server,
ends the episode itself on a purchase and scores it, so the loop asks the environment for a session and lets a
step say ``done`` with a reward.

Calls that fail transiently are retried with backoff (``retries``): a connection refused or reset, a timeout, a 429 or
5xx answer. A WebShop action is not idempotent, so it is retried only where the server cannot have applied it (no
connection, 429, 503); a session the server lost (it restarted: 404) is opened again on the same goal and its actions
replayed, so a restarted server loses no episode. What still fails raises ``EnvServerError``, which ends the
episode as ``env_error``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from verl_mem1.protocol import format_documents, format_webshop_page
from verl_mem1.records import Task
from verl_mem1.tasks.webshop import parse_goal_range, webshop_task


def auth_headers(api_key: str | None = None) -> dict[str, str]:
    """The bearer token ``mem1 serve`` servers require when started with ``--api-key`` / ``$MEM1_API_KEY``: ``api_key``,
    else ``$MEM1_API_KEY`` (no header when both are unset or empty)."""
    from env_servers.serve_options import API_KEY_ENV

    key = (api_key or os.environ.get(API_KEY_ENV, "")).strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


class EnvServerError(RuntimeError):
    """The environment could not answer, after its retries; the episode ends as ``env_error`` (never trained on)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status of the last answer, None when there was none


RETRY_STATUS = frozenset({429, 500, 502, 503, 504})  # answers worth asking again
UNAPPLIED_STATUS = frozenset({429, 503})  # answers that say the request was not carried out
# A command's first call, made before any episode (~3.5 s of waits): a wrong URL is reported now, not after the
# minute and a half a running job's retries (mem1.env_retries) wait out a restarting server
STARTUP_RETRIES = 3


class _Retryable(Exception):
    def __init__(self, response: httpx.Response):
        self.response = response


@dataclass
class Step:
    """What one action did: the observation body (without hint or info tags), and whether the episode ended."""

    observation: str
    done: bool = False
    reward: float | None = None
    valid: bool = True  # False: the environment rejected the action (the observation says why)
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class EpisodeSession(Protocol):
    async def step(self, action: str) -> Step: ...

    async def close(self) -> None: ...


@runtime_checkable
class Environment(Protocol):
    # True: the environment scores episodes (the reward of the step that ends it, 0 if none does)
    rewards_episodes: bool

    async def open(self, task: Task) -> EpisodeSession:
        """A session for one episode of ``task``."""
        ...


class _HTTPEnvironment:
    """An environment behind an HTTP server: one pooled client, made on first use in the running event loop."""

    name = "environment"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 30.0,
        client: httpx.AsyncClient | None = None,
        retries: int = 8,
        retry_wait_s: float = 0.5,
    ):
        self.url = url.rstrip("/")
        self._client = client
        self._timeout = timeout_s
        self.retries = retries
        self.retry_wait_s = retry_wait_s  # the first wait; each next one doubles, up to 30 s, with jitter

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, headers=auth_headers())
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def request(
        self, method: str, url: str, body: dict[str, Any] | None = None, *, idempotent: bool = True, retry: bool = True
    ) -> httpx.Response:
        """One call, retried while it fails transiently (``retry``); the last answer (any status) or
        ``EnvServerError``."""

        def transient(exc: BaseException) -> bool:
            if isinstance(exc, _Retryable):
                return idempotent or exc.response.status_code in UNAPPLIED_STATUS
            if idempotent:
                return isinstance(exc, httpx.TransportError)
            return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)  # never reached the server

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1 if retry else 1),
            wait=wait_exponential_jitter(multiplier=self.retry_wait_s, max=30.0, jitter=self.retry_wait_s),
            retry=retry_if_exception(transient),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    response = await self._http().request(method, url, json=body)
                    if response.status_code in RETRY_STATUS:
                        raise _Retryable(response)
                    return response
        except _Retryable as exc:
            return exc.response
        except httpx.HTTPError as exc:
            raise EnvServerError(f"{self.name} server unreachable at {url}: {exc!r}") from exc
        raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying either returns or raises


class _SearchSession:
    def __init__(self, env: RetrievalEnvironment):
        self._env = env

    async def step(self, action: str) -> Step:
        return Step(await self._env.observe(action))

    async def close(self) -> None:
        pass


class RetrievalEnvironment(_HTTPEnvironment):
    """Client of a Search-R1-compatible retrieval server (``POST /retrieve``)."""

    rewards_episodes = False
    name = "retrieval"

    @classmethod
    def from_config(cls, url: str, mem1: Any) -> RetrievalEnvironment:
        """The client a ``Mem1Config`` asks for (``envs.py``)."""
        return cls(url, topk=mem1.topk, timeout_s=mem1.retriever_timeout_s, retries=mem1.env_retries)

    def __init__(self, url: str, *, topk: int = 3, **http: Any):
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        super().__init__(url, **http)
        self.endpoint = self.url if self.url.endswith("/retrieve") else self.url + "/retrieve"
        self.topk = topk

    async def search(self, queries: list[str]) -> list[list[str]]:
        """Retrieve ``topk`` documents' contents for each query."""
        body = {"queries": queries, "topk": self.topk, "return_scores": True}
        response = await self.request("POST", self.endpoint, body)
        if response.status_code != 200:
            raise EnvServerError(
                f"retrieval server answered {response.status_code}: {response.text[:200]}", response.status_code
            )
        try:
            results = response.json()["result"]
            return [[(item["document"] if "document" in item else item)["contents"] for item in r] for r in results]
        except (ValueError, KeyError, TypeError) as exc:
            raise EnvServerError(f"malformed retrieval response: {response.text[:200]}") from exc

    async def observe(self, query: str) -> str:
        (docs,) = await self.search([query])
        return format_documents(docs)

    async def open(self, task: Task) -> EpisodeSession:
        return _SearchSession(self)


class WebShopSession:
    """One shopping session on a WebShop server (``mem1 serve webshop``)."""

    def __init__(self, env: WebShopEnvironment, session_id: str, goal_index: int | None = None):
        self._env = env
        self.session_id = session_id
        self.goal_index = goal_index
        self.actions: list[str] = []  # what the server has applied, to rebuild the session if the server loses it

    async def _step(self, action: str) -> dict[str, Any]:
        return await self._env.call("POST", f"/sessions/{self.session_id}/step", {"action": action}, idempotent=False)

    async def step(self, action: str) -> Step:
        try:
            data = await self._step(action)
        except EnvServerError as exc:
            if exc.status != 404 or self.goal_index is None:
                raise
            await self._restore()
            data = await self._step(action)
        self.actions.append(action)
        return self._env.to_step(data)

    async def _restore(self) -> None:
        """The server no longer knows the session (it restarted): open one on the same goal and replay the actions
        (the shop is deterministic for a given goal, data and seed, so the page is the one the episode was on)."""
        data = await self._env.call("POST", "/sessions", {"goal_index": self.goal_index}, idempotent=False)
        self.session_id = str(data.get("session_id"))
        for action in self.actions:
            await self._step(action)

    async def close(self) -> None:
        try:
            await self._env.call("DELETE", f"/sessions/{self.session_id}", retry=False)  # best effort: no waiting
        except EnvServerError:
            pass  # the server may have dropped it already; nothing to keep


class WebShopEnvironment(_HTTPEnvironment):
    """Client of the WebShop server: a session per episode on the task's goal (``extra_info.goal_index``)."""

    rewards_episodes = True
    name = "WebShop"

    @classmethod
    def from_config(cls, url: str, mem1: Any) -> WebShopEnvironment:
        """The client a ``Mem1Config`` asks for (``envs.py``)."""
        return cls(url, timeout_s=mem1.retriever_timeout_s, retries=mem1.env_retries)

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, idempotent: bool = True, retry: bool = True
    ) -> dict[str, Any]:
        response = await self.request(method, self.url + path, body, idempotent=idempotent, retry=retry)
        if response.status_code != 200:
            raise EnvServerError(
                f"WebShop server answered {response.status_code}: {response.text[:200]}", response.status_code
            )
        try:
            return response.json()
        except ValueError as exc:
            raise EnvServerError(f"malformed WebShop response: {response.text[:200]}") from exc

    @staticmethod
    def to_step(data: dict[str, Any]) -> Step:
        try:
            actions = data["available_actions"]
            page = format_webshop_page(data["observation"], bool(actions["has_search_bar"]), actions["clickables"])
            return Step(page, bool(data["done"]), float(data["reward"]), bool(data["valid"]), data.get("info") or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise EnvServerError(f"malformed WebShop step: {str(data)[:200]}") from exc

    async def open(self, task: Task) -> WebShopSession:
        goal_index = task.extra_info.get("goal_index")
        if goal_index is None:
            raise EnvServerError(f"task {task.id!r} has no extra_info.goal_index: it is not a WebShop task")
        data = await self.call("POST", "/sessions", {"goal_index": int(goal_index)}, idempotent=False)
        session = WebShopSession(self, str(data.get("session_id")), int(goal_index))
        if task.questions and data.get("instruction") != task.questions[0]:
            await session.close()
            raise EnvServerError(
                f"task {task.id!r}: goal {goal_index} on {self.url} has instruction {data.get('instruction')!r}, "
                f"not the task's {task.questions[0]!r}: the task file was made from other WebShop data or seed"
            )
        return session

    async def goals(self, spec: str = "0:") -> list[Task]:
        """Tasks for the server's goals ``START:STOP`` (STOP optional: to the end), in index order."""
        total = int((await self.call("GET", "/goals?offset=0&limit=1"))["total"])
        indices = parse_goal_range(spec, total)
        tasks: list[Task] = []
        for start in range(indices.start, indices.stop, 1000):
            page = await self.call("GET", f"/goals?offset={start}&limit={min(1000, indices.stop - start)}")
            tasks += [webshop_task(g["index"], g["instruction"], g["asin"], g.get("options")) for g in page["goals"]]
        return tasks


def fetch_webshop_tasks(url: str, spec: str = "0:") -> list[Task]:
    """The server's goals ``START:STOP`` as tasks, from synchronous code (a client in its own event loop)."""
    import asyncio

    async def fetch() -> list[Task]:
        env = WebShopEnvironment(url, retries=STARTUP_RETRIES)
        try:
            return await env.goals(spec)
        finally:
            await env.aclose()

    return asyncio.run(fetch())
