"""An OpenAI-compatible completions server over any local Hugging Face causal LM (``mem1 serve llm``).

Serves a model the way ``vllm serve`` does for the parts MEM1 rollouts use, so the rollout library's
OpenAI backend runs the same against it on CPU and against vLLM on GPUs. It sits beside ``verl_mem1``: it
uses the library's backends, and nothing in the library imports it. Only constants live here: fastapi,
torch and transformers are imported by :mod:`env_servers.llm.server` when a server starts.
"""

DEFAULT_PORT = 8001
