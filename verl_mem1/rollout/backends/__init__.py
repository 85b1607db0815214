"""LLM backends for the episode loop: local transformers, OpenAI-compatible HTTP, verl's server client."""

from verl_mem1.rollout.backends.base import FinishReason, Generation, LLMBackend, SamplingConfig

__all__ = ["FinishReason", "Generation", "LLMBackend", "SamplingConfig"]
