"""The ``mem1:`` section of a verl trainer config: what the MEM1 agent loop needs beyond verl's own keys.

It lives at the top level of the Hydra config (``recipes/qa.yaml``) so one override (``mem1.retriever_url=...``)
reaches every agent loop worker; keys given in the agent-loop config file (``recipes/agent_loops.yaml``) are
passed to the agent loop's constructor and win over it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any

from verl_mem1.protocol import get_tag_set, parse_context_policy

logger = logging.getLogger(__name__)

LAYOUTS = ("packed", "per_turn")
REWARDS = ("in_loop", "verl")
ENVS = ("retrieval", "webshop")


@dataclass
class MEM1LoopConfig:
    env: str = "retrieval"  # retrieval: QA over retriever_url | webshop: shopping on webshop_url
    retriever_url: str = "http://127.0.0.1:8000"  # Search-R1 API: retrieval or web search server
    webshop_url: str = "http://127.0.0.1:8003"  # `mem1 serve webshop`
    topk: int = 3  # documents per query (MEM1 and Search-R1 train with 3)
    retriever_timeout_s: float = 30.0
    context: str = "mem1"  # context policy: mem1 | full | window:K
    tags: str | None = None  # None: the row's extra_info.tags, else "paper"
    max_turns: int | None = None  # None: the row's extra_info.max_turns, else 6 (20 for 8+ objectives)
    max_new_tokens: int | None = 1024  # per turn; None: rollout.response_length
    max_observation_tokens: int | None = None  # cut longer observation bodies
    max_context_tokens: int | None = None  # None: rollout.prompt_length + rollout.response_length
    on_invalid: str = "continue"  # continue | end
    require_state: bool = False
    layout: str = "packed"  # packed: one shared-prefix sample per episode; per_turn: one sample per turn
    reward: str = "in_loop"  # in_loop: score in the agent loop; verl: leave it to verl's reward manager
    invalid_action_penalty: float = 0.0  # subtracted from the reward per invalid turn

    def __post_init__(self) -> None:
        parse_context_policy(self.context)
        if self.tags is not None:
            get_tag_set(self.tags)
        if self.layout not in LAYOUTS:
            raise ValueError(f"mem1.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.reward not in REWARDS:
            raise ValueError(f"mem1.reward must be one of {REWARDS}, got {self.reward!r}")
        if self.env not in ENVS:
            raise ValueError(f"mem1.env must be one of {ENVS}, got {self.env!r}")
        if self.env == "webshop" and self.reward != "in_loop":
            raise ValueError("mem1.env=webshop needs mem1.reward=in_loop: only the agent loop sees the purchase score")
        if self.tags is not None and get_tag_set(self.tags).answers == (self.env == "webshop"):
            raise ValueError(f"mem1.tags={self.tags!r} does not fit mem1.env={self.env!r}")
        if float(self.invalid_action_penalty) < 0:
            raise ValueError(f"mem1.invalid_action_penalty must be >= 0, got {self.invalid_action_penalty!r}")
        if self.on_invalid not in ("continue", "end"):
            raise ValueError(f"mem1.on_invalid must be 'continue' or 'end', got {self.on_invalid!r}")
        if int(self.topk) < 1:
            raise ValueError(f"mem1.topk must be >= 1, got {self.topk!r}")
        if self.max_new_tokens is not None and int(self.max_new_tokens) < 1:
            raise ValueError(f"mem1.max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        if self.max_turns is not None and int(self.max_turns) < 1:
            raise ValueError(f"mem1.max_turns must be >= 1, got {self.max_turns!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELDS = frozenset(f.name for f in fields(MEM1LoopConfig))


def load_mem1_config(trainer_config: Any, overrides: dict[str, Any] | None = None) -> MEM1LoopConfig:
    """``trainer_config.mem1`` (optional) updated with ``overrides``.

    Keys of the section this loop does not use are ignored with a warning: the section is shared with the
    single-machine trainer's recipe (``recipes/tiny.yaml``), and Hydra already rejects misspelt command-line keys.
    Unknown ``overrides`` (constructor arguments from the agent-loop config file) are an error.
    """
    section: dict[str, Any] = {}
    raw = trainer_config.get("mem1") if hasattr(trainer_config, "get") else None
    if raw is not None:
        from omegaconf import OmegaConf

        section.update(OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else dict(raw))
    ignored = sorted(set(section) - FIELDS)
    if ignored:
        logger.warning("mem1 config keys not used by the MEM1 agent loop: %s", ignored)
    unknown = sorted(set(overrides or {}) - FIELDS)
    if unknown:
        raise ValueError(f"unknown mem1 config keys {unknown}; known: {sorted(FIELDS)}")
    values = {k: v for k, v in section.items() if k in FIELDS}
    values.update(overrides or {})
    return MEM1LoopConfig(**values)
