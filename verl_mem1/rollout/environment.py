"""Environments the episode loop talks to: a session per episode, one action in, one observation body out.

Retrieval is stateless (every session just searches); WebShop keeps a shopping session per episode on its server,
ends the episode itself on a purchase and scores it, so the loop asks the environment for a session and lets a
step say ``done`` with a reward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx

from verl_mem1.protocol import format_documents, format_webshop_page
from verl_mem1.records import Task
from verl_mem1.tasks.webshop import parse_goal_range, webshop_task


class EnvironmentError_(RuntimeError):
    """The environment could not answer; the loop turns this into an observation, not a crash."""


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

    def __init__(self, url: str, *, timeout_s: float = 30.0, client: httpx.AsyncClient | None = None):
        self.url = url.rstrip("/")
        self._client = client
        self._timeout = timeout_s

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


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

    def __init__(self, url: str, *, topk: int = 3, timeout_s: float = 30.0, client: httpx.AsyncClient | None = None):
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        super().__init__(url, timeout_s=timeout_s, client=client)
        self.endpoint = self.url if self.url.endswith("/retrieve") else self.url + "/retrieve"
        self.topk = topk

    async def search(self, queries: list[str]) -> list[list[str]]:
        """Retrieve ``topk`` documents' contents for each query."""
        try:
            response = await self._http().post(
                self.endpoint, json={"queries": queries, "topk": self.topk, "return_scores": True}
            )
        except httpx.HTTPError as exc:
            raise EnvironmentError_(f"retrieval server unreachable at {self.endpoint}: {exc!r}") from exc
        if response.status_code != 200:
            raise EnvironmentError_(f"retrieval server answered {response.status_code}: {response.text[:200]}")
        try:
            results = response.json()["result"]
            return [[(item["document"] if "document" in item else item)["contents"] for item in r] for r in results]
        except (ValueError, KeyError, TypeError) as exc:
            raise EnvironmentError_(f"malformed retrieval response: {response.text[:200]}") from exc

    async def observe(self, query: str) -> str:
        (docs,) = await self.search([query])
        return format_documents(docs)

    async def open(self, task: Task) -> EpisodeSession:
        return _SearchSession(self)


class WebShopSession:
    """One shopping session on a WebShop server (``mem1 serve webshop``)."""

    def __init__(self, env: WebShopEnvironment, session_id: str):
        self._env = env
        self.session_id = session_id

    async def step(self, action: str) -> Step:
        data = await self._env.call("POST", f"/sessions/{self.session_id}/step", {"action": action})
        return self._env.to_step(data)

    async def close(self) -> None:
        try:
            await self._env.call("DELETE", f"/sessions/{self.session_id}")
        except EnvironmentError_:
            pass  # the server may have dropped it already; nothing to keep


class WebShopEnvironment(_HTTPEnvironment):
    """Client of the WebShop server: a session per episode on the task's goal (``extra_info.goal_index``)."""

    rewards_episodes = True

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = await self._http().request(method, self.url + path, json=body)
        except httpx.HTTPError as exc:
            raise EnvironmentError_(f"WebShop server unreachable at {self.url}: {exc!r}") from exc
        if response.status_code != 200:
            raise EnvironmentError_(f"WebShop server answered {response.status_code}: {response.text[:200]}")
        try:
            return response.json()
        except ValueError as exc:
            raise EnvironmentError_(f"malformed WebShop response: {response.text[:200]}") from exc

    @staticmethod
    def to_step(data: dict[str, Any]) -> Step:
        try:
            actions = data["available_actions"]
            page = format_webshop_page(data["observation"], bool(actions["has_search_bar"]), actions["clickables"])
            return Step(page, bool(data["done"]), float(data["reward"]), bool(data["valid"]), data.get("info") or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise EnvironmentError_(f"malformed WebShop step: {str(data)[:200]}") from exc

    async def open(self, task: Task) -> WebShopSession:
        goal_index = task.extra_info.get("goal_index")
        if goal_index is None:
            raise EnvironmentError_(f"task {task.id!r} has no extra_info.goal_index: it is not a WebShop task")
        data = await self.call("POST", "/sessions", {"goal_index": int(goal_index)})
        session = WebShopSession(self, str(data.get("session_id")))
        if task.questions and data.get("instruction") != task.questions[0]:
            await session.close()
            raise EnvironmentError_(
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
        env = WebShopEnvironment(url)
        try:
            return await env.goals(spec)
        finally:
            await env.aclose()

    return asyncio.run(fetch())
