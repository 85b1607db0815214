"""Environments the episode loop talks to: one query in, one observation body out."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import httpx

from verl_mem1.protocol import format_documents


class EnvironmentError_(RuntimeError):
    """The environment could not answer; the loop turns this into an observation, not a crash."""


@runtime_checkable
class Environment(Protocol):
    async def observe(self, query: str) -> str:
        """Return the observation body (without the turns-left hint or the info tags)."""
        ...


class RetrievalEnvironment:
    """Client of a Search-R1-compatible retrieval server (``POST /retrieve``)."""

    def __init__(self, url: str, *, topk: int = 3, timeout_s: float = 30.0, client: httpx.AsyncClient | None = None):
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.url = url.rstrip("/")
        self.endpoint = self.url if self.url.endswith("/retrieve") else self.url + "/retrieve"
        self.topk = topk
        self._client = client
        self._timeout = timeout_s

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        return self._client

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

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
