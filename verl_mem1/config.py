"""The ``mem1:`` section of a training config, in one typed place for every consumer.

The verl plug-in's agent loop (``training/verl_plugin``), its engines (``mem1.attention``) and ``mem1 rollout``/
``mem1 eval`` all read the same ``Mem1Config``: one set of names, one set of defaults, one validation. It sits at the
top level of a Hydra recipe (``recipes/*.yaml``) next to verl's own sections, so one override
(``mem1.retriever_url=...``) reaches every worker. An unknown key is an error. What only ``mem1 train`` reads on one
machine (where its tasks come from) is ``single_machine.py``'s own section.

Depends on the protocol only (tags, context policies), so anything above it can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from verl.base_config import BaseConfig

from verl_mem1.envs import ENV_SPECS, env_spec
from verl_mem1.protocol import get_tag_set, parse_context_policy

ENVS = tuple(ENV_SPECS)  # envs.py: one spec per environment
LAYOUTS = ("packed", "per_turn")
REWARDS = ("in_loop", "verl")
ATTENTION_BACKENDS = ("auto", "flex", "dense", "segmented", "flash")
ATTENTION_ENV = "MEM1_ATTENTION_BACKEND"  # overrides mem1.attention in a worker's environment (see attention_backend)
AUTO = "auto"  # a URL that means: serve the bundled environment for the run (mem1 train, rollout, eval only)


class ConfigError(ValueError):
    """A bad config value; the message names the key."""


def _fail(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"mem1.{key}={value!r}: {why}")


@dataclass
class Mem1Config(BaseConfig):
    """MEM1 settings beyond verl's keys (a recipe's ``mem1:`` section), shared by the verl plug-in and the rollout
    commands.

    Args:
        env: ``retrieval`` (QA over ``retriever_url``) or ``webshop`` (shopping on ``webshop_url``, scored by the shop).
        retriever_url: a Search-R1-API retrieval or web-search server; ``auto`` serves the bundled HotpotQA BM25
            index for the run (``mem1 train``, ``rollout``, ``eval`` only).
        webshop_url: a ``mem1 serve webshop`` server; ``auto`` serves the bundled 100-product shop in-process.
        topk: documents per query (MEM1 and Search-R1 train with 3).
        retriever_timeout_s: HTTP timeout of one environment call.
        env_retries: retries of an environment call that failed to connect, timed out or got a 429/5xx answer
            (waits of 0.5 s doubling to at most 30 s, with jitter: ~2.5 min for 8). A call still failing ends its
            episode as ``env_error``, which is never trained on.
        context: the context policy: ``mem1`` (prompt + last turn), ``full`` or ``window:K``.
        tags: ``paper``, ``search_r1`` or ``webshop``; None: the task's ``extra_info.tags``, else the env's default.
        max_turns: None: the task's ``extra_info.max_turns``, else 6 (20 for 8+ objectives; WebShop 15).
        max_new_tokens: per turn; None: verl's ``rollout.response_length``.
        max_observation_tokens: cut longer observation bodies (None: no cut).
        max_context_tokens: end an episode before its context passes this (None: the consumer's limit, if any).
        on_invalid: what an invalid action does: ``continue`` (an error observation) or ``end``.
        require_state: a turn without an internal state is invalid.
        invalid_action_penalty: subtracted from an episode's reward per invalid turn.
        layout: verl plug-in: ``packed`` (one shared-prefix sample per episode) or ``per_turn`` (v1 trainer only).
        reward: verl plug-in: ``in_loop`` (score in the agent loop) or ``verl`` (verl's reward manager).
        attention: training-time attention: ``auto`` (flash-attn on CUDA when installed, else flex on CUDA,
            segmented on CPU), ``flex``, ``dense`` (reference), ``segmented`` or ``flash``. ``$MEM1_ATTENTION_BACKEND``
            overrides it (``attention_backend``).
    """

    env: str = "retrieval"
    retriever_url: str = "http://127.0.0.1:8000"
    webshop_url: str = "http://127.0.0.1:8003"
    topk: int = 3
    retriever_timeout_s: float = 30.0
    env_retries: int = 8
    context: str = "mem1"
    tags: str | None = None
    max_turns: int | None = None
    max_new_tokens: int | None = None
    max_observation_tokens: int | None = None
    max_context_tokens: int | None = None
    on_invalid: str = "continue"
    require_state: bool = False
    invalid_action_penalty: float = 0.0
    layout: str = "packed"
    reward: str = "in_loop"
    attention: str = "auto"

    def __post_init__(self) -> None:
        def integer(key: str, minimum: int, allow_none: bool = False) -> None:
            value = getattr(self, key)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int):
                raise _fail(key, value, "expected an integer")
            if value < minimum:
                raise _fail(key, value, f"must be >= {minimum}")

        def number(key: str, minimum: float, allow_none: bool = False) -> None:
            value = getattr(self, key)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _fail(key, value, "expected a number")
            if value < minimum:
                raise _fail(key, value, f"must be >= {minimum}")

        def choice(key: str, options: tuple[str, ...]) -> None:
            if getattr(self, key) not in options:
                raise _fail(key, getattr(self, key), f"choose one of {', '.join(options)}")

        choice("env", ENVS)
        for key in ("retriever_url", "webshop_url"):
            url = getattr(self, key)
            if not isinstance(url, str) or not (url == AUTO or url.startswith(("http://", "https://"))):
                raise _fail(key, url, "expected 'auto' or an http(s):// URL of a server")
        try:
            parse_context_policy(str(self.context))
        except ValueError as exc:
            raise _fail("context", self.context, str(exc)) from None
        if self.tags is not None:
            try:
                tag_set = get_tag_set(str(self.tags))
            except (ValueError, KeyError) as exc:
                raise _fail("tags", self.tags, str(exc)) from None
            spec = env_spec(self.env)
            if tag_set.answers == spec.scores_episodes:
                fit = [n for n in ("paper", "search_r1", "webshop") if get_tag_set(n).answers != spec.scores_episodes]
                raise _fail("tags", self.tags, f"does not fit mem1.env={self.env}: use {' or '.join(fit)} (or null)")
        integer("topk", 1)
        number("retriever_timeout_s", 0.001)
        integer("env_retries", 0)
        integer("max_turns", 1, allow_none=True)
        integer("max_new_tokens", 1, allow_none=True)
        integer("max_observation_tokens", 1, allow_none=True)
        integer("max_context_tokens", 2, allow_none=True)
        choice("on_invalid", ("continue", "end"))
        number("invalid_action_penalty", 0.0)
        choice("layout", LAYOUTS)
        choice("reward", REWARDS)
        if env_spec(self.env).scores_episodes and self.reward != "in_loop":
            raise _fail(
                "reward", self.reward, f"mem1.env={self.env} needs in_loop: only the agent loop sees its reward"
            )
        choice("attention", ATTENTION_BACKENDS)

    @classmethod
    def from_section(cls, section: Any = None, **overrides: Any) -> Mem1Config:
        """Build from a recipe's ``mem1:`` section (DictConfig, mapping or None) updated with ``overrides``.

        Raises ``ConfigError`` for a key this class does not define (a typo must not be silently ignored).
        """
        values: dict[str, Any] = {}
        if section is not None:
            from omegaconf import OmegaConf

            values.update(OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else section)
        values.update(overrides)
        values.pop("_target_", None)
        unknown = sorted(set(values) - FIELDS)
        if unknown:
            raise ConfigError(f"unknown mem1 config keys {unknown}; known: {sorted(FIELDS)}")
        return cls(**values)

    @classmethod
    def from_trainer_config(cls, trainer_config: Any, **overrides: Any) -> Mem1Config:
        """The ``mem1`` section of a whole trainer config (absent: the defaults)."""
        section = trainer_config.get("mem1") if hasattr(trainer_config, "get") else None
        return cls.from_section(section, **overrides)

    def replace(self, **changes: Any) -> Mem1Config:
        """A copy with ``changes`` (validated again)."""
        return Mem1Config.from_section({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS_IN_ORDER}

    def url(self) -> str:
        """The environment server this config talks to (``auto`` until a bundled server is started)."""
        return getattr(self, env_spec(self.env).url_key)


FIELDS_IN_ORDER = tuple(f.name for f in fields(Mem1Config) if f.name != "_target_")
FIELDS = frozenset(FIELDS_IN_ORDER)
