"""Environment servers that fail: real uvicorn servers stopped and restarted mid-episode (no episode is lost), a
server that stays down or keeps answering 503 (the episode ends as ``env_error`` after exactly the configured retries),
and a bad request (not retried)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from env_servers.background import BackgroundServer, free_port
from tests.support import ScriptedBackend
from verl_mem1.config import Mem1Config
from verl_mem1.records import Task
from verl_mem1.rollout.backends.oracle import run_oracle_episodes
from verl_mem1.rollout.backends.webshop_oracle import WebShopOracleBackend
from verl_mem1.rollout.configure import episode_config
from verl_mem1.rollout.environment import EnvServerError, RetrievalEnvironment, WebShopEnvironment
from verl_mem1.rollout.episode import EpisodeConfig, run_episode

TASK = Task(id="hp1", questions=["Which city hosted Tinted Windows' first performance?"], ground_truth=[["Tulsa"]])
TURNS = ["<IS>look it up</IS><query>Tinted Windows first performance</query>", "<answer>Tulsa</answer>"]


class RestartingBackend:
    """Delegates generation; before generation number ``at`` it stops the environment server and starts a new one
    on the same port ``delay_s`` later (in a thread), so the episode's next environment call meets a dead server."""

    def __init__(self, inner, stop, restart, at: int, delay_s: float = 0.6):
        self.inner, self.stop, self.restart, self.at, self.delay_s = inner, stop, restart, at, delay_s
        self.calls = 0
        self.restarted = threading.Event()

    async def generate(self, prompt_ids, sampling):
        self.calls += 1
        if self.calls == self.at:
            self.stop()
            timer = threading.Timer(self.delay_s, lambda: (self.restart(), self.restarted.set()))
            timer.start()
        return await self.inner.generate(prompt_ids, sampling)


def _play(backend, env, tokenizer, **config):
    async def go():
        try:
            return await run_episode(TASK, backend, env, tokenizer, EpisodeConfig(max_turns=3, **config))
        finally:
            await env.aclose()

    return asyncio.run(go())


def test_a_restarted_retrieval_server_loses_no_episode(tiny_backend, bm25_retriever):
    from env_servers.retrieval.server import create_app

    tok = tiny_backend.tokenizer
    port = free_port()
    servers = [BackgroundServer(create_app(bm25_retriever), port=port).start()]
    try:
        steady = _play(ScriptedBackend(tiny_backend.model, tok, TURNS), RetrievalEnvironment(servers[0].url), tok)

        def restart():
            servers.append(BackgroundServer(create_app(bm25_retriever), port=port).start())

        backend = RestartingBackend(ScriptedBackend(tiny_backend.model, tok, TURNS), servers[0].stop, restart, at=1)
        env = RetrievalEnvironment(servers[0].url, retries=8, retry_wait_s=0.2)
        record = _play(backend, env, tok)
        assert backend.restarted.is_set(), "the server was down when the episode asked it"
    finally:
        for server in servers:
            server.stop()
    assert record.termination == steady.termination == "answer" and record.error is None
    assert [t.observation_ids for t in record.turns] == [t.observation_ids for t in steady.turns]


def test_a_restarted_webshop_server_replays_the_session(tiny_model_dir):
    """The shop's sessions live in the server process: the new one has none, so the client opens the goal again and
    replays the actions taken; the purchase is scored as if nothing happened."""
    from transformers import AutoTokenizer

    from env_servers.webshop.data import load_catalog
    from env_servers.webshop.reward import fallback_nouns
    from env_servers.webshop.server import create_app
    from env_servers.webshop.shop import Shop

    def app():
        return create_app(Shop(load_catalog(), nouns=fallback_nouns))

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    mem1 = Mem1Config(env="webshop", max_turns=10, max_new_tokens=512)
    config = episode_config(mem1)
    port = free_port()
    servers = [BackgroundServer(app(), port=port).start()]
    try:
        from verl_mem1.rollout.environment import fetch_webshop_tasks

        tasks = fetch_webshop_tasks(servers[0].url, "0:3")

        def restart():
            servers.append(BackgroundServer(app(), port=port).start())

        async def go():
            env = WebShopEnvironment(servers[0].url, retries=8, retry_wait_s=0.2)
            inner = WebShopOracleBackend(tasks, tokenizer, config)
            backend = RestartingBackend(inner, servers[0].stop, restart, at=3)  # after a search and a click
            try:
                records = []
                for task in tasks:  # one at a time: the restart lands inside the first episode
                    records += await run_oracle_episodes(
                        [task], env, tokenizer, config, backend=backend, reward_fn=None, progress=False
                    )
                return records, backend
            finally:
                await env.aclose()

        records, backend = asyncio.run(go())
    finally:
        for server in servers:
            server.stop()
    assert backend.restarted.is_set()
    assert [r.reward for r in records] == [1.0, 1.0, 1.0] and all(r.error is None for r in records)
    assert len(records[0].turns) >= 3


def _counting_app(status: int) -> tuple[FastAPI, list[int]]:
    app, hits = FastAPI(), []

    @app.get("/health")
    def health():
        return {"ok": True}

    @app.post("/retrieve")
    def retrieve():
        hits.append(1)
        return JSONResponse({"detail": "busy"}, status_code=status)

    return app, hits


def test_a_server_that_keeps_failing_ends_the_episode_after_the_retries(tiny_backend):
    tok = tiny_backend.tokenizer
    app, hits = _counting_app(503)
    with BackgroundServer(app) as server:
        env = RetrievalEnvironment(server.url, retries=2, retry_wait_s=0.01)
        record = _play(ScriptedBackend(tiny_backend.model, tok, TURNS), env, tok)
    assert len(hits) == 3, "one call and two retries"
    assert record.termination == "env_error" and "503" in record.error
    assert len(record.turns) == 1 and record.turns[0].observation_ids == [] and record.final_answer is None


def test_an_unreachable_server_ends_the_episode_as_env_error(tiny_backend):
    tok = tiny_backend.tokenizer
    env = RetrievalEnvironment(f"http://127.0.0.1:{free_port()}", timeout_s=2, retries=1, retry_wait_s=0.01)
    record = _play(ScriptedBackend(tiny_backend.model, tok, TURNS), env, tok)
    assert record.termination == "env_error" and "retrieval server unreachable" in record.error


def test_a_bad_request_is_answered_once_not_retried():
    app, hits = _counting_app(422)

    async def go(env):
        try:
            return await env.search(["x"])
        finally:
            await env.aclose()

    with BackgroundServer(app) as server:
        with pytest.raises(EnvServerError, match="answered 422") as raised:
            asyncio.run(go(RetrievalEnvironment(server.url, retries=5, retry_wait_s=0.01)))
    assert raised.value.status == 422 and len(hits) == 1
