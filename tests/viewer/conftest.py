"""Real episodes for the viewer: the episode loop and ``mem1 eval``'s harness over the retrieval server, with a scripted
policy scored by the tiny model (so the turns are known: two searches, a malformed turn, then the answer)."""

from __future__ import annotations

import asyncio
import re

import pytest
import torch

from verl_mem1.evaluation.harness import evaluate
from verl_mem1.records import Task
from verl_mem1.rollout.backends.base import Generation
from verl_mem1.rollout.environment import RetrievalEnvironment
from verl_mem1.rollout.episode import EpisodeConfig

MAX_TURNS = 4
TASKS = [
    Task(
        id="stardust",
        questions=["Who wrote Stardust?", "Where is Tulsa?"],
        ground_truth=[["Neil Gaiman"], ["Oklahoma"]],
    ),
    Task(id="paris", questions=["Capital of France?"], ground_truth=[["Paris"]]),
]
SCRIPT = [
    "<IS>Q1 unknown. Q2 unknown.</IS><query>Stardust novel author</query>",
    "<IS>Q1: Neil Gaiman (turn 1). Q2 unknown.</IS><query>Tulsa state</query>",
    "I think the answer is somewhere",  # no tags: an invalid action the episode survives
    "<IS>Q1: Neil Gaiman. Q2: Oklahoma.</IS><answer>Neil Gaiman; Oklahoma</answer>",
]
_TURNS_LEFT = re.compile(r"You have (\d+) turns? left")


class TurnScriptedPolicy:
    """Writes ``SCRIPT[t]`` at turn ``t`` (read from the last turns-left hint in its context, so it works under any
    context policy and concurrency), with the tiny model's log-probs of those tokens."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    async def generate(self, prompt_ids, sampling):
        hints = _TURNS_LEFT.findall(self.tokenizer.decode(prompt_ids))
        turn = MAX_TURNS - int(hints[-1]) if hints else 0
        ids = self.tokenizer.encode(SCRIPT[turn], add_special_tokens=False)
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([list(prompt_ids) + ids]), logits_to_keep=len(ids) + 1).logits
        logp = torch.log_softmax(logits[0, :-1], dim=-1)
        return Generation(ids, [float(logp[j, t]) for j, t in enumerate(ids)], "stop")


@pytest.fixture(scope="module")
def eval_runs(tiny_backend, tiny_model_dir, retrieval_url, tmp_path_factory):
    """``{policy: mem1 eval folder}`` for mem1 and full: episodes.jsonl and a metrics.json that names the model."""
    policy = TurnScriptedPolicy(tiny_backend.model, tiny_backend.tokenizer)
    root = tmp_path_factory.mktemp("eval")
    runs = {}
    for context in ("mem1", "full"):

        async def go(context=context):
            env = RetrievalEnvironment(retrieval_url)
            config = EpisodeConfig(context=context, max_turns=MAX_TURNS, max_new_tokens=64)
            try:
                await evaluate(
                    TASKS,
                    policy,
                    env,
                    tiny_backend.tokenizer,
                    config,
                    root / context,
                    model=str(tiny_model_dir),
                    progress=False,
                )
            finally:
                await env.aclose()

        asyncio.run(go())
        runs[context] = root / context
    return runs
