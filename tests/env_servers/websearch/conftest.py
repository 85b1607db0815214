"""Fixtures: the fake Serper (one per session, reset per test) and real websearch servers pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from env_servers.background import BackgroundServer
from env_servers.websearch.serper import SerperClient
from env_servers.websearch.server import create_app
from tests.env_servers.websearch.fake_serper import API_KEY, FakeSerper, Running


@pytest.fixture(scope="session")
def fake_serper_server() -> Iterator[FakeSerper]:
    fake = FakeSerper(API_KEY)
    with BackgroundServer(fake.app()) as server:
        fake.url = server.url
        yield fake


@pytest.fixture()
def fake(fake_serper_server: FakeSerper) -> Iterator[FakeSerper]:
    """The session's fake Serper, reset; fails the test if the client broke Serper's protocol."""
    fake_serper_server.reset()
    yield fake_serper_server
    assert fake_serper_server.violations == []
    assert all(s.key in (API_KEY, None) or s.key.startswith("wrong-") for s in fake_serper_server.seen)


@pytest.fixture()
def websearch(fake: FakeSerper) -> Iterator[Any]:
    """``websearch(**client_kwargs) -> Running``: a real websearch server whose client talks to the fake.

    Defaults keep tests fast: tiny backoff, no rate limit, no disk cache; pass ``app={...}`` for
    ``create_app`` options and ``api_key=`` to use another key.
    """
    started: list[BackgroundServer] = []

    def start(*, api_key: str = API_KEY, app: dict[str, Any] | None = None, **client_kwargs: Any) -> Running:
        kwargs: dict[str, Any] = {"base_url": fake.url, "backoff_s": 0.01, "rate_limit_per_s": None, "timeout_s": 2.0}
        client = SerperClient(api_key, **(kwargs | client_kwargs))
        server = BackgroundServer(create_app(client, **(app or {}))).start()
        started.append(server)
        return Running(server.url, client, server)

    yield start
    for server in started:
        server.stop()
