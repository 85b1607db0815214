"""Load test of the WebShop server: N concurrent clients on loopback, each playing scripted perfect episodes.

Rollouts drive the WebShop server from many agents at once, each holding a session for a whole episode, so
what matters is episode and step throughput, tail latency under concurrency, and that nothing fails. The
server runs in its own process (as in deployment; a client in the same process would compete for the GIL)
and the client is one asyncio process with ``--clients`` workers sharing one connection pool (aiohttp by
default, httpx optionally). Each worker opens a session on the next goal (cycling through the goal list),
plays what a perfect shopper would (``search[<target title>]``, ``click[<target asin>]``, ``click[<value>]``
for each goal option, ``click[buy now]``), checks the purchase scored 1.0, and closes the session. Every
run is bounded both in episode count and in wall time.

    .venv/bin/python benchmarks/webshop_load.py --episodes 2000 --clients 1 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtest import Call, http_session, start_server  # noqa: E402

from env_servers.background import free_port  # noqa: E402
from env_servers.webshop.data import load_catalog  # noqa: E402

# One episode's script: the goal index and the actions a perfect shopper takes.
Plan = tuple[int, list[str]]


@dataclass
class RunResult:
    client: str
    clients: int
    episodes: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    rewards: list[float]

    @property
    def steps(self) -> int:
        return len(self.latencies_ms)

    @property
    def episodes_per_s(self) -> float:
        return self.episodes / self.seconds if self.seconds else 0.0

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    @property
    def mean_reward(self) -> float:
        return sum(self.rewards) / len(self.rewards) if self.rewards else float("nan")

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "clients": self.clients,
            "episodes": self.episodes,
            "steps": self.steps,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "episodes_per_s": round(self.episodes_per_s, 1),
            "steps_per_s": round(self.steps_per_s, 1),
            "p50_ms": round(self.percentile(50), 2),
            "p99_ms": round(self.percentile(99), 2),
            "mean_reward": self.mean_reward,
        }


def episode_plans() -> list[Plan]:
    """The perfect shopper's actions for every goal of the bundled shop, in goal order."""
    catalog = load_catalog()
    plans = []
    for index, goal in enumerate(catalog.goals):
        asin = goal["asin"]
        options = goal["goal_options"]
        values = list(options.values()) if isinstance(options, dict) else list(options)
        actions = [f"search[{catalog.by_asin[asin]['Title']}]", f"click[{asin.lower()}]"]
        actions += [f"click[{value}]" for value in values] + ["click[buy now]"]
        plans.append((index, actions))
    return plans


def check_goals(url: str, plans: list[Plan]) -> None:
    """Fail early if the server's goal list is not the one the plans were made from."""
    data = httpx.get(f"{url}/goals", params={"limit": 10000}, timeout=30.0).json()
    catalog_asins = [actions[1][len("click[") : -1] for _, actions in plans]
    server_asins = [g["asin"].lower() for g in data["goals"]]
    if data["total"] != len(plans) or server_asins != catalog_asins:
        raise RuntimeError(f"the server's {data['total']} goals differ from the bundled catalog's {len(plans)}")


async def play_episode(call: Call, plan: Plan, latencies: list[float]) -> tuple[bool, float]:
    """Open a session, play ``plan``, close the session: ``(ok, final reward)``.

    ``ok`` is false if any response is not HTTP 200 (or not the expected body), any action is invalid, or the
    purchase does not end the episode with reward 1.0. The session is closed even when the episode failed.
    """

    async def timed(method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        t0 = time.perf_counter()
        try:
            return await call(method, path, body)
        finally:
            latencies.append((time.perf_counter() - t0) * 1000)

    goal_index, actions = plan
    ok, reward, session_id = False, 0.0, None
    try:
        status, data = await timed("POST", "/sessions", {"goal_index": goal_index})
        if status == 200 and data["goal_index"] == goal_index:
            session_id = data["session_id"]
            for action in actions:
                status, data = await timed("POST", f"/sessions/{session_id}/step", {"action": action})
                if status != 200 or not data["valid"]:
                    break
            else:
                reward = float(data["reward"])
                ok = bool(data["done"]) and reward == 1.0
    except Exception:  # noqa: BLE001 - any failure (connection, timeout, bad body) is an error
        ok = False
    if session_id is not None:
        try:
            status, data = await timed("DELETE", f"/sessions/{session_id}")
            ok = ok and status == 200 and data["closed"] == session_id
        except Exception:  # noqa: BLE001
            ok = False
    return ok, reward


async def run_load(
    url: str, plans: list[Plan], *, clients: int, episodes: int, max_seconds: float, client: str = "aiohttp"
) -> RunResult:
    """``clients`` workers take episode numbers from a shared counter until ``episodes`` are played or time is up."""
    latencies: list[float] = []
    rewards: list[float] = []
    errors = 0
    issued = 0
    session, call = http_session(client, url, clients)
    async with session:
        start = time.perf_counter()
        deadline = start + max_seconds

        async def worker() -> None:
            nonlocal issued, errors
            while issued < episodes and time.perf_counter() < deadline:
                n = issued
                issued += 1
                ok, reward = await play_episode(call, plans[n % len(plans)], latencies)
                rewards.append(reward)
                errors += not ok

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(clients))), timeout=max_seconds + 60)
        seconds = time.perf_counter() - start
    return RunResult(client, clients, len(rewards), errors, seconds, latencies, rewards)


def format_table(results: list[RunResult]) -> str:
    lines = [
        "| client | clients | episodes | steps (HTTP requests) | errors | episodes/s | steps/s "
        "| p50 (ms) | p99 (ms) | mean reward |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.client} | {r.clients} | {r.episodes} | {r.steps} | {r.errors} | {r.episodes_per_s:.0f} | "
            f"{r.steps_per_s:.0f} | {r.percentile(50):.1f} | {r.percentile(99):.1f} | {r.mean_reward:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients, one run each (default 1 8 32)"
    )
    parser.add_argument("--episodes", type=int, default=2000, help="episodes per run (default 2000)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="time limit per run (default 120)")
    parser.add_argument(
        "--client",
        choices=("aiohttp", "httpx"),
        nargs="+",
        default=["aiohttp"],
        help="HTTP client library(ies) to load with, one run each (default aiohttp)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers here")
    args = parser.parse_args(argv)
    if min(args.clients) <= 0 or args.episodes <= 0 or args.max_seconds <= 0:
        parser.error("--clients, --episodes and --max-seconds must be positive")

    plans = episode_plans()
    port = free_port()
    t0 = time.perf_counter()
    proc = start_server(["webshop"], port)
    print(f"server up on port {port} ({time.perf_counter() - t0:.1f} s), {len(plans)} goals", file=sys.stderr)
    try:
        url = f"http://127.0.0.1:{port}"
        check_goals(url, plans)
        results = []
        for client in args.client:
            for clients in args.clients:
                common = dict(clients=clients, client=client)
                asyncio.run(run_load(url, plans, episodes=clients, max_seconds=30, **common))  # warm-up
                run = run_load(url, plans, episodes=args.episodes, max_seconds=args.max_seconds, **common)
                results.append(asyncio.run(run))
                print(f"{client} x{clients}: {results[-1].seconds:.1f} s", file=sys.stderr)
        open_sessions = httpx.get(f"{url}/health", timeout=10.0).json()["sessions"]
        print(f"sessions still open on the server: {open_sessions}", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(format_table(results))
    if args.json is not None:
        report = {
            "argv": sys.argv[1:] if argv is None else argv,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "goals": len(plans),
            "open_sessions_after": open_sessions,
            "results": [r.to_dict() for r in results],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if any(r.errors for r in results) or open_sessions else 0


if __name__ == "__main__":
    sys.exit(main())
