"""The MEM1 agent loop for verl 0.9: one MEM1 episode per dataset row, returned as training samples.

verl's agent-loop worker hands every row (``raw_prompt``, ``reward_model``, ``extra_info``, ...) to
``run(sampling_params, **row)`` with a ``server_manager`` that routes token-id prompts to the vLLM/SGLang
replicas. The loop plays the episode with the project's episode loop (contexts built from recorded token ids,
never re-tokenized) through ``VerlServerBackend`` and a ``RetrievalEnvironment`` (``mem1.env: webshop``: a
``WebShopEnvironment``, one shopping session per episode), and returns:

- ``mem1.layout: packed`` (default): one ``AgentLoopOutput`` per episode holding the packed sample
  (``[prompt | seg_1 | ... | seg_T]``): ``prompt_ids`` = the prompt, ``response_ids`` = the segments,
  ``response_mask`` = 1 on generated tokens, ``response_logprobs`` = the rollout log-probs aligned with them,
  and the restarting position ids and segment ids in ``extra_fields`` for the MEM1 engine (``engine.py``);
- ``mem1.layout: per_turn``: a list of outputs, one plain causal sample per turn (``context_t`` ⊕ ``generated_t``),
  which verl 0.9 accepts from the TransferQueue (v1) trainer only (``AgentLoopWorkerTQ._agent_loop_postprocess``).

The reward is computed in the loop (``mem1.reward: in_loop``, default) with verl's configured custom reward
function (``reward.custom_reward_function``, ours by default) on the episode's own text, with the answer the episode
loop recorded in ``extra_info["mem1_final_answer"]`` (ours scores that, not a re-parse), so a truncated packed
sample never loses its answer; ``mem1.reward: verl`` leaves it to verl's reward manager instead. WebShop episodes
are scored by the shop (the purchase reward the environment returns).

An episode the environment failed (``env_error``: a server still down after the client's ``mem1.env_retries``) raises
``EnvironmentFailure``: verl's v1 trainer marks its group failed, trains the siblings that finished and never this
episode (``recipes/cluster.yaml`` refills a group left empty); the legacy trainer stops on it.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput, register

from verl_mem1.config import FIELDS, Mem1Config
from verl_mem1.envs import env_spec
from verl_mem1.records import EPISODE_KEY, EPISODES_DIR, EpisodeRecord, Task, episode_log_row, task_from_mapping
from verl_mem1.rollout.backends.verl_server import VerlServerBackend
from verl_mem1.rollout.configure import episode_config, make_environment
from verl_mem1.rollout.episode import EpisodeConfig, prompt_ids_for, run_episode
from verl_mem1.tasks.rewards import RECORDED_ANSWER_KEY, penalised
from verl_mem1.training.layout import (
    end_on_trained_token,
    pack_episode,
    packed_token_count,
    per_turn_samples,
    per_turn_token_count,
    truncate,
)
from verl_mem1.training.verl_plugin.fields import ATTENTION_KEY, POSITION_KEY, SEGMENT_KEY

logger = logging.getLogger(__name__)

AGENT_NAME = "mem1_agent"
_VERL_KWARGS = {"name", "tools", "hf_model_type"}  # what AgentLoopWorker and its config file add
_REWARD_FNS: dict[str, Any] = {}


class EnvironmentFailure(RuntimeError):
    """The episode lost its environment; it must not become a training sample (its reward says nothing)."""


def check_layout_supported(trainer_config: Any, mem1: Mem1Config) -> None:
    """Per-turn samples need verl's multi-output agent loops, which only the v1 (TransferQueue) trainer has."""
    trainer = trainer_config.get("trainer") or {}
    if mem1.layout == "per_turn" and not trainer.get("use_v1", True):
        raise ValueError(
            "mem1.layout=per_turn returns several samples per episode, which verl 0.9 supports only in the v1 "
            "trainer (trainer.use_v1=true, AgentLoopWorkerTQ); the legacy AgentLoopWorker takes one output per "
            "row. Set trainer.use_v1=true or mem1.layout=packed."
        )


def _reward_fn(trainer_config: Any):
    """verl's configured custom reward function (with its reward_kwargs), else ``tasks.rewards.compute_score``."""
    reward = trainer_config.get("reward") or {}
    spec = reward.get("custom_reward_function") or {}
    key = repr(sorted((k, str(v)) for k, v in dict(spec).items()))
    if key not in _REWARD_FNS:
        fn = None
        if spec.get("path"):
            from verl.trainer.ppo.reward import get_custom_reward_fn

            fn = get_custom_reward_fn(trainer_config)
        if fn is None:
            from verl_mem1.tasks.rewards import compute_score

            fn = compute_score
        _REWARD_FNS[key] = fn
    return _REWARD_FNS[key]


def episode_log_path(trainer_config: Any) -> Path | None:
    """Where this worker process appends its episodes: ``<trainer.rollout_data_dir>/mem1_episodes/<host>-<pid>.jsonl``,
    or None when verl's rollout dump is off. verl dumps decoded text only (and its v1 trainer no extra fields), so
    the token-exact records ``mem1 view`` reads are written by the loop itself (on a cluster the folder must be on
    storage every node writes to)."""
    root = (trainer_config.get("trainer") or {}).get("rollout_data_dir")
    return Path(root) / EPISODES_DIR / f"{socket.gethostname()}-{os.getpid()}.jsonl" if root else None


def task_from_row(row: dict[str, Any]) -> Task:
    """A ``Task`` from the fields verl's RLHFDataset gives each row (``raw_prompt`` holds the chat messages)."""
    mapping = {
        "prompt": row.get("raw_prompt", row.get("prompt")),
        "reward_model": row.get("reward_model"),
        "extra_info": row.get("extra_info"),
        "data_source": row.get("data_source"),
        "id": row.get("id"),
    }
    if hasattr(mapping["reward_model"], "items"):
        mapping["reward_model"] = dict(mapping["reward_model"])
    index = row.get("index", 0)
    return task_from_mapping(mapping, "verl row", int(index) if str(index).isdigit() else 0)


def trajectory_text(record: EpisodeRecord, tokenizer: Any) -> str:
    """What the model wrote and read, in order (the full-context view a verl reward function expects)."""
    parts = []
    for turn in record.turns:
        parts.append(turn.text)
        if turn.observation_ids:
            parts.append(tokenizer.decode(turn.observation_ids, skip_special_tokens=False))
    return "".join(parts)


@register(AGENT_NAME)
class MEM1AgentLoop(AgentLoopBase):
    """verl agent loop that plays a MEM1 episode and returns it as packed (or per-turn) training samples."""

    task_from_row = staticmethod(task_from_row)

    def __init__(self, trainer_config, server_manager, tokenizer, processor, dataset_cls, data_config, **kwargs):
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in FIELDS}
        unknown = sorted(set(kwargs) - _VERL_KWARGS)
        if unknown:  # a typo in agent_loops.yaml must not be silently ignored
            raise ValueError(f"unknown MEM1 agent loop arguments {unknown}; mem1 keys: {sorted(FIELDS)}")
        super().__init__(trainer_config, server_manager, tokenizer, processor, dataset_cls, data_config, **kwargs)
        self.mem1 = Mem1Config.from_trainer_config(self.config, **overrides)
        check_layout_supported(self.config, self.mem1)
        self.prompt_length = int(self.rollout_config.prompt_length)
        self.response_length = int(self.rollout_config.response_length)
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_token_ids = {int(eos)} if eos is not None else set()
        self.episode_log = episode_log_path(self.config)

    # -------------------------------------------------------------------------------------------- rollout

    def episode_config(self, task: Task, sampling_params: dict[str, Any]) -> EpisodeConfig:
        """verl's sampling params (validation makes them greedy) with the mem1 section and the row's own settings."""
        return episode_config(
            self.mem1,
            task=task,
            temperature=float(sampling_params.get("temperature", 1.0)),
            top_p=float(sampling_params.get("top_p", 1.0)),
            top_k=int(sampling_params.get("top_k", -1) or -1),
            max_new_tokens=self.response_length,
            max_context_tokens=self.prompt_length + self.response_length,
        )

    async def play(
        self, task: Task, sampling_params: dict[str, Any], backend: VerlServerBackend | None = None
    ) -> EpisodeRecord:
        """Run one episode against verl's rollout servers and the retrieval/web-search server."""
        config = self.episode_config(task, sampling_params)
        prompt = prompt_ids_for(task, self.tokenizer, config.tags, config.max_turns)
        if len(prompt) > self.prompt_length:
            raise ValueError(
                f"task {task.id!r}: prompt of {len(prompt)} tokens exceeds rollout.prompt_length="
                f"{self.prompt_length}; MEM1 prompts hold every question and cannot be cut: raise "
                "data.max_prompt_length or compose fewer objectives"
            )
        # one request id per episode: verl routes it to one replica, whose prefix cache then holds the prompt
        backend = backend or self.backend()
        env = make_environment(self.mem1)
        try:
            return await run_episode(task, backend, env, self.tokenizer, config)
        finally:
            await env.aclose()

    def backend(self) -> VerlServerBackend:
        """One episode's client of verl's rollout servers."""
        return VerlServerBackend(
            self.server_manager, eos_token_ids=self.eos_token_ids, request_id=uuid.uuid4().hex, tokenizer=self.tokenizer
        )

    async def score(self, record: EpisodeRecord, row: dict[str, Any]) -> tuple[float | None, dict[str, Any]]:
        """``(reward, extra info)`` from the configured reward function, or ``(None, {})`` for ``reward: verl``."""
        if self.mem1.reward == "verl":
            return None, {}
        # an environment that scores episodes: the loop took its reward (WebShop: 0 without a purchase), penalised
        if env_spec(self.mem1.env).scores_episodes:
            reward = float(record.reward or 0.0)
            return reward, {"score": reward, "webshop_success": float(reward >= 1.0)}
        score, info = await self.answer_score(record, row)
        reward = penalised(score, record, self.mem1.invalid_action_penalty)
        return reward, {**info, "score": reward, "answer_score": score, "invalid_turns": record.invalid_turns}

    async def answer_score(self, record: EpisodeRecord, row: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """The configured reward function's score of the episode's answer, and what else it returned."""
        reward_model = row.get("reward_model") or {}
        result = _reward_fn(self.config)(
            data_source=row.get("data_source"),
            solution_str=trajectory_text(record, self.tokenizer),
            ground_truth=reward_model.get("ground_truth") if hasattr(reward_model, "get") else None,
            extra_info={**dict(row.get("extra_info") or {}), RECORDED_ANSWER_KEY: record.final_answer},
        )
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, dict):
            return float(result["score"]), dict(result)
        return float(result), {"score": float(result)}

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput | list[AgentLoopOutput]:
        task = task_from_row(kwargs)
        started = time.perf_counter()
        backend = self.backend()
        record = await self.play(task, sampling_params, backend)
        if record.termination == "env_error":
            raise EnvironmentFailure(f"task {task.id!r}: the environment failed after its retries: {record.error}")
        t0 = time.perf_counter()
        reward, info = await self.score(record, kwargs)
        if self.episode_log is not None:
            self.log_episode(record, reward, backend.weight_versions()["max_global_steps"])
        outputs = self.to_outputs(record, reward, info)
        for output in outputs if isinstance(outputs, list) else [outputs]:
            output.metrics.compute_score = time.perf_counter() - t0
            output.extra_fields.update(backend.weight_versions())
        logger.debug("episode %s: %.2fs, reward %s", task.id, time.perf_counter() - started, reward)
        return outputs

    def log_episode(self, record: EpisodeRecord, reward: float | None, step: int | None) -> None:
        """Append the episode, with its reward and the weights' step, to this worker's file for ``mem1 view``."""
        row = episode_log_row(record, step=step, model=str(self.config.actor_rollout_ref.model.path))
        row[EPISODE_KEY]["reward"] = reward if reward is not None else record.reward
        self.episode_log.parent.mkdir(parents=True, exist_ok=True)
        with self.episode_log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    # -------------------------------------------------------------------------------------------- outputs

    def _stats(self, record: EpisodeRecord) -> dict[str, Any]:
        return {
            "mem1_turns": len(record.turns),
            "mem1_peak_tokens": record.peak_tokens,
            "mem1_packed_tokens": packed_token_count(record),
            "mem1_per_turn_tokens": per_turn_token_count(record),
            "mem1_answered": float(record.final_answer is not None),
        }

    def _metrics(self, record: EpisodeRecord) -> AgentLoopMetrics:
        return AgentLoopMetrics(
            generate_sequences=sum(t.timings.get("generate_s", 0.0) for t in record.turns),
            tool_calls=sum(t.timings.get("env_s", 0.0) for t in record.turns),
        )

    def to_outputs(
        self, record: EpisodeRecord, reward: float | None = None, reward_info: dict[str, Any] | None = None
    ) -> AgentLoopOutput | list[AgentLoopOutput]:
        """The episode as verl samples: one packed output, or one output per turn (``mem1.layout``)."""
        stats = self._stats(record)
        extra: dict[str, Any] = {**stats, "mem1_termination": record.termination, "turn_scores": [], "tool_rewards": []}
        if reward is not None:
            extra["reward_extra_info"] = {**(reward_info or {}), **stats}
        if self.mem1.layout == "per_turn":
            return self._per_turn_outputs(record, reward, extra)
        return self._packed_output(record, reward, extra)

    def _output(self, prompt, response, mask, logprobs, reward, record, extra) -> AgentLoopOutput:
        kwargs: dict[str, Any] = {}
        if reward is not None:
            kwargs["reward_score"] = reward
        return AgentLoopOutput(
            prompt_ids=prompt,
            response_ids=response,
            response_mask=mask,
            response_logprobs=logprobs,
            num_turns=len(record.turns),
            metrics=self._metrics(record),
            extra_fields=extra,
            **kwargs,
        )

    def _filler(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad if pad is not None else next(iter(self.eos_token_ids), 0))

    def _packed_output(self, record: EpisodeRecord, reward: float | None, extra: dict[str, Any]) -> AgentLoopOutput:
        full = pack_episode(record)
        # exact; the reward saw the whole episode. Ending on a generated token keeps the score (verl places it on the
        # last response token) where GAE sees it
        sample = end_on_trained_token(truncate(full, full.prompt_len + self.response_length))
        extra["mem1_truncated_tokens"] = full.length - sample.length
        p = sample.prompt_len
        ids, pos, seg = sample.input_ids.tolist(), sample.position_ids.tolist(), sample.segment_ids.tolist()
        mask, lps = sample.loss_mask.tolist(), sample.rollout_logprobs.tolist()
        if len(ids) == p:  # nothing was generated: one untrained filler token keeps verl's shapes valid
            ids, pos, seg, mask, lps = ids + [self._filler()], pos + [p], seg + [1], mask + [0], lps + [0.0]
        extra.update({"mem1_layout": "packed", POSITION_KEY: pos, SEGMENT_KEY: seg, ATTENTION_KEY: self.mem1.attention})
        return self._output(ids[:p], ids[p:], mask[p:], lps[p:], reward, record, extra)

    def _per_turn_outputs(
        self, record: EpisodeRecord, reward: float | None, extra: dict[str, Any]
    ) -> list[AgentLoopOutput]:
        outputs = []
        for sample in per_turn_samples(record):
            c = sample.prompt_len
            ids, lps = sample.input_ids.tolist(), sample.rollout_logprobs.tolist()
            cut = min(len(ids), c + self.response_length)
            turn_extra = {**extra, "mem1_layout": "per_turn", "mem1_turn": int(sample.turn_index[0])}
            turn_extra["mem1_truncated_tokens"] = len(ids) - cut
            # every turn carries the episode's reward: verl broadcasts the last output's, and grades GRPO groups
            # by the last output of each session (verl/trainer/ppo/v1/utils.py)
            outputs.append(self._output(ids[:c], ids[c:cut], [1] * (cut - c), lps[c:cut], reward, record, turn_extra))
        if not outputs:
            prompt = list(record.prompt_ids)
            extra = {**extra, "mem1_layout": "per_turn", "mem1_turn": -1, "mem1_truncated_tokens": 0}
            outputs.append(self._output(prompt, [self._filler()], [0], [0.0], reward, record, extra))
        return outputs
