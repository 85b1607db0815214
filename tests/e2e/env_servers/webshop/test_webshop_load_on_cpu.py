"""32 concurrent WebShop episodes against one server: no errors, every scripted purchase scores 1.0."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from env_servers.webshop.shop import Shop

pytestmark = pytest.mark.e2e

SESSIONS = 32


async def _episode(client: httpx.AsyncClient, goal_index: int, goal: dict[str, Any], errors: list[str]) -> float:
    """Open a session on ``goal_index``, search its instruction, page to the product, pick the options, buy."""

    async def act(sid: str, action: str) -> dict[str, Any]:
        r = await client.post(f"/sessions/{sid}/step", json={"action": action})
        body = r.json() if r.status_code == 200 else {}
        if not body.get("valid"):
            raise RuntimeError(f"{action!r}: HTTP {r.status_code} {r.text[:300]}")
        return body

    try:
        r = await client.post("/sessions", json={"goal_index": goal_index})
        if r.status_code != 200:
            raise RuntimeError(f"open: HTTP {r.status_code} {r.text[:300]}")
        opened = r.json()
        sid = opened["session_id"]
        if opened["goal_index"] != goal_index or opened["instruction"] != goal["instruction_text"]:
            raise RuntimeError(f"opened the wrong goal: {opened['goal_index']}")
        page = await act(sid, f"search[{opened['instruction']}]")
        while goal["asin"].lower() not in page["available_actions"]["clickables"]:
            page = await act(sid, "click[next >]")
        page = await act(sid, f"click[{goal['asin']}]")
        for value in goal["goal_options"].values():
            page = await act(sid, f"click[{value}]")
        done = await act(sid, "click[buy now]")
        if not done["done"] or done["info"]["asin"] != goal["asin"]:
            raise RuntimeError(f"not done after buying: {done['info']}")
        if (await client.delete(f"/sessions/{sid}")).status_code != 200:
            raise RuntimeError("close failed")
        return done["reward"]
    except (httpx.HTTPError, RuntimeError, KeyError) as exc:
        errors.append(f"goal {goal_index}: {type(exc).__name__}: {exc}")
        return -1.0


async def _run(base_url: str, goals: dict[int, dict[str, Any]]) -> tuple[list[float], list[str]]:
    errors: list[str] = []
    limits = httpx.Limits(max_connections=SESSIONS, max_keepalive_connections=SESSIONS)
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0, limits=limits) as client:
        episodes = (_episode(client, i, goal, errors) for i, goal in goals.items())
        rewards = await asyncio.wait_for(asyncio.gather(*episodes), timeout=60)
    return list(rewards), errors


def test_32_concurrent_episodes(webshop_url: str, webshop_shop: Shop) -> None:
    all_goals = webshop_shop.catalog.goals
    indices = list(range(0, len(all_goals), len(all_goals) // SESSIONS))[:SESSIONS]  # spread over the goal list
    assert len(set(indices)) == SESSIONS
    sessions_before = webshop_shop.num_sessions
    rewards, errors = asyncio.run(_run(webshop_url, {i: all_goals[i] for i in indices}))
    assert errors == []
    assert rewards == [1.0] * SESSIONS
    assert webshop_shop.num_sessions == sessions_before  # every session was closed
    assert httpx.get(f"{webshop_url}/health").json()["status"] == "ok"
