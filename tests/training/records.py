"""Hand-built episode records for the training tests."""

from __future__ import annotations

import random

from verl_mem1.records import EpisodeRecord, TurnRecord


def make_record(
    prompt: list[int],
    turns: list[tuple[list[int], list[int], list[float]]],
    *,
    temperature: float = 1.0,
    observations: list[list[int]] | None = None,
) -> EpisodeRecord:
    """A hand-built record from ``(context_ids, generated_ids, logprobs)`` per turn."""
    observations = observations or [[] for _ in turns]
    return EpisodeRecord(
        id="hand",
        data_source="test",
        questions=["q"],
        ground_truth=[["a"]],
        context_policy="mem1",
        tag_set="paper",
        sampling={"temperature": temperature, "top_p": 1.0, "top_k": -1},
        prompt_ids=list(prompt),
        turns=[
            TurnRecord(
                index=i,
                context_ids=list(ctx),
                generated_ids=list(gen),
                logprobs=list(lps),
                text="",
                internal_state=None,
                action={"kind": "query", "text": "", "reason": ""},
                observation_ids=list(obs),
                finish_reason="stop",
                timings={},
            )
            for i, ((ctx, gen, lps), obs) in enumerate(zip(turns, observations, strict=True))
        ],
    )


def mem1_record(prompt_len: int, turns: int, gen_len: int, obs_len: int, *, seed: int = 0, temperature: float = 1.0):
    """A random-token MEM1 record (context_t = prompt + previous turn), log-probs left at 0."""
    rng = random.Random(seed)
    prompt = [rng.randrange(1000, 150000) for _ in range(prompt_len)]
    spec, observations, previous = [], [], []
    for _ in range(turns):
        gen = [rng.randrange(1000, 150000) for _ in range(gen_len)]
        obs = [rng.randrange(1000, 150000) for _ in range(obs_len)]
        spec.append((prompt + previous, gen, [0.0] * gen_len))
        observations.append(obs)
        previous = gen + obs
    return make_record(prompt, spec, temperature=temperature, observations=observations)
