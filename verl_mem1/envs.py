"""The environments an episode can be played in, one spec each, by name: what differs between retrieval QA (and web
search, which speaks the same API) and WebShop is written here, and the rest of the package asks the spec.

A spec names its default tag set, the ``Mem1Config`` field holding its server's URL, the ``mem1 serve`` servers that
speak its protocol (the first is the one single-machine runs start bundled), its rollout client, and whether the
environment scores episodes itself (a WebShop purchase) instead of answers being matched. Adding an environment is its
server (``env_servers/<name>/``), its client (an ``Environment`` with ``from_config``), its tag set and prompt if new
(``protocol/``), and one spec below.

A bottom-layer module (imports only the standard library): ``config.py`` validates ``mem1.env`` against it, and the
clients are named by import path, so nothing here loads the rollout stack.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EnvSpec:
    """One environment kind (``mem1.env``)."""

    name: str  # the mem1.env value
    tags: str  # the tag set its prompts use unless mem1.tags or the task names another
    url_key: str  # the Mem1Config field with its server's URL
    servers: tuple[str, ...]  # `mem1 serve` servers that speak its protocol; the first is the bundled one
    client: str  # "module:Class" of its rollout client, built by Class.from_config(url, mem1)
    scores_episodes: bool  # True: the environment's reward scores the episode (no answers to match)
    server_tasks: str | None = None  # "module:function(url, spec)" giving tasks from the server (WebShop's goals)

    def client_class(self) -> Any:
        """The rollout client class (imported on demand)."""
        return _resolve(self.client)

    def fetch_tasks(self, url: str, spec: str) -> list[Any]:
        """Tasks served by the environment itself (``server_tasks``); ``ValueError`` for one that serves none."""
        if self.server_tasks is None:
            raise ValueError(f"mem1.env={self.name} serves no tasks: give a task file")
        return _resolve(self.server_tasks)(url, spec)


def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


ENV_SPECS: dict[str, EnvSpec] = {
    spec.name: spec
    for spec in (
        EnvSpec(
            name="retrieval",
            tags="paper",
            url_key="retriever_url",
            servers=("retrieval", "websearch"),
            client="verl_mem1.rollout.environment:RetrievalEnvironment",
            scores_episodes=False,
        ),
        EnvSpec(
            name="webshop",
            tags="webshop",
            url_key="webshop_url",
            servers=("webshop",),
            client="verl_mem1.rollout.environment:WebShopEnvironment",
            scores_episodes=True,
            server_tasks="verl_mem1.rollout.environment:fetch_webshop_tasks",
        ),
    )
}


def env_spec(name: str) -> EnvSpec:
    """The spec of ``mem1.env=name``; ``ValueError`` naming the choices for an unknown one."""
    try:
        return ENV_SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown environment {name!r}; choose one of {', '.join(ENV_SPECS)}") from None


def url_key_of_server(server: str) -> str:
    """The ``Mem1Config`` URL field a ``mem1 serve SERVER`` belongs in (``ValueError`` for a server no env speaks)."""
    for spec in ENV_SPECS.values():
        if server in spec.servers:
            return spec.url_key
    known = sorted(s for spec in ENV_SPECS.values() for s in spec.servers)
    raise ValueError(f"{server!r} is not a `mem1 serve` server of an environment; one of {known}")
