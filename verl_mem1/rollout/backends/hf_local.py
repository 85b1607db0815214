"""Local Hugging Face transformers backend, batched across concurrent episodes (the CPU default).

Concurrent ``generate`` calls are queued; a worker decodes them one token at a time in a thread, so the event loop
keeps serving environment calls meanwhile. Batching is continuous: between two decode steps the calls that arrived
join the running batch (up to ``max_batch_size`` rows, left-padded into one KV cache) and finished rows leave it, so a
turn never waits for another turn's longest generation. Each row keeps its own sampling settings, stop strings and
length budget.

Each row's context is prefilled on its own (no padding computed) and reuses the KV of the longest prefix of a recent
context (:class:`PrefixCache`): a MEM1 context starts with the task's prompt at every turn, and a GRPO group's
episodes share it, so most of a prompt is computed once. A model the backend loads itself decodes with
:func:`grouped_decode_attention` (SDPA without transformers' per-step copy of a grouped-query cache: ~4x faster
decode steps for SmolLM2 at 32 rows x 800 cached tokens on 2 CPU cores), and the batch's cache grows in place
(:func:`_append_layer_class`; 1.4x a decode step at 16 rows x 1,000 tokens). Numbers: benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from verl_mem1.rollout.backends.base import Generation, SamplingConfig, find_stop

logger = logging.getLogger(__name__)

_STOP_TAIL_TOKENS = 16  # stop strings are matched in the decoded text of the last few tokens
GROUPED_DECODE = "mem1_grouped_decode"  # the attention implementation name registered with transformers


def grouped_decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA, except that a one-token query (a decode step) reads a grouped-query KV cache without copying it.

    transformers' SDPA path on CPU repeats every K/V head for its query heads (``repeat_kv``) at every step; with a
    long cache that copy, not the matmuls, is most of a decode step. Here the query heads that share a K/V head are
    stacked against it instead: the same scores, softmax (fp32) and weighted sum, without the copy. Anything else
    (prefill, half precision, dropout, sliding windows, soft-capping) goes to transformers' SDPA function unchanged.

    Args:
        query: ``(batch, heads, q_len, head_dim)``; key, value: ``(batch, kv_heads, kv_len, head_dim)``.
        attention_mask: transformers' SDPA mask, ``(batch, 1, q_len, >= kv_len)`` (bool: True attends; or additive),
            or None (attend to everything).

    Returns:
        ``(output (batch, q_len, heads, head_dim), None)``, as transformers' attention functions return.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    special = dropout or kwargs.get("sliding_window") or kwargs.get("softcap") or kwargs.get("s_aux") is not None
    if query.shape[2] != 1 or special or query.dtype != torch.float32:  # half precision: SDPA keeps fp32 scores
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * (scaling if scaling is not None else dim**-0.5)
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[-2]]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    out = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def use_grouped_decode(model: torch.nn.Module) -> bool:
    """Switch a model that attends with SDPA to :func:`grouped_decode_attention` (and SDPA's masks); True if it did."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(GROUPED_DECODE, grouped_decode_attention)
    AttentionMaskInterface.register(GROUPED_DECODE, sdpa_mask)
    model.set_attn_implementation(GROUPED_DECODE)
    return True


_SPARE_COLUMNS = 64  # free cache columns per row: decode steps between two copies of the cache


@functools.cache
def _append_layer_class() -> type:
    """A transformers ``DynamicLayer`` whose keys and values live in buffers with spare columns, where a decode step
    writes its token in place. transformers' own layer appends with ``torch.cat``: a copy of the whole cache at every
    step, a quarter of a SmolLM2 decode step at 16 rows x 1,000 tokens on 2 CPU cores (benchmarks/README.md)."""
    from transformers.cache_utils import DynamicLayer

    class AppendLayer(DynamicLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
            """``keys``, ``values``: buffers ``(rows, kv_heads, capacity, head_dim)`` whose first ``length`` columns
            hold the cache."""
            super().__init__()
            self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
            self._keys, self._values, self._length = keys, values, length
            self._views()

        def _views(self) -> None:
            self.keys, self.values = self._keys[:, :, : self._length], self._values[:, :, : self._length]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            end = self._length + key_states.shape[2]
            if end > self._keys.shape[2]:  # out of spare columns: one copy into a longer buffer
                grow = (0, 0, 0, end - self._length + _SPARE_COLUMNS)
                self._keys = torch.nn.functional.pad(self.keys, grow)
                self._values = torch.nn.functional.pad(self.values, grow)
            self._keys[:, :, self._length : end] = key_states
            self._values[:, :, self._length : end] = value_states
            self._length = end
            self._views()
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._views()

        def drop_leading(self, columns: int) -> None:
            """Forget the first ``columns`` positions (padding no row attends to any more): a view, no copy."""
            self._keys, self._values = self._keys[:, :, columns:], self._values[:, :, columns:]
            self._length -= columns
            self._views()

    return AppendLayer


@dataclass
class _Row:
    """One request in the running batch: its prompt, settings, token budget and what it has generated so far."""

    prompt_ids: list[int]
    sampling: SamplingConfig
    budget: int
    future: asyncio.Future | None = None  # None for :meth:`HFLocalBackend.generate_batch`'s rows
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None

    def generation(self) -> Generation:
        return Generation(self.token_ids, self.logprobs, finish_reason=self.finish_reason or "length")


class _RunningBatch:
    """The rows being decoded together: their left-padded KV cache, attention mask and next-token logits.

    Rows join between decode steps (:meth:`admit`) and leave when they finish (:meth:`keep`), so a request never
    waits for another row's longest generation (continuous batching). Every row's next position is the count of its
    real tokens, so left padding never shifts positions.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.rows: list[_Row] = []
        self.cache = None  # DynamicCache: per layer (rows, kv_heads, width, head_dim)
        self.attention = torch.zeros((0, 0), dtype=torch.long)  # (rows, width): 1 where a row has a real token
        self.logits = torch.zeros((0, 0))  # (rows, vocab): each row's next-token logits

    def admit(self, rows: list[_Row], prefills: list[tuple[list, torch.Tensor]]) -> None:
        """Add rows whose contexts were prefilled (per-layer KV ``(1, kv_heads, len, head_dim)`` and logits), left-
        padding them and the running rows to one width."""
        from transformers import DynamicCache

        old_width = self.attention.shape[1]
        width = max(old_width, *(len(r.prompt_ids) for r in rows))
        attention = torch.zeros((len(self.rows) + len(rows), width), dtype=torch.long)
        attention[: len(self.rows), width - old_width :] = self.attention
        for i, row in enumerate(rows, start=len(self.rows)):
            attention[i, width - len(row.prompt_ids) :] = 1
        cache, append_layer = DynamicCache(), _append_layer_class()
        spare = min(_SPARE_COLUMNS, max(row.budget - len(row.token_ids) for row in self.rows + rows))
        for index, (key0, _) in enumerate(prefills[0][0]):
            shape = (attention.shape[0], key0.shape[1], width + spare, key0.shape[3])
            keys, values = key0.new_empty(shape), key0.new_empty(shape)  # the spare columns are written before read
            if self.rows:
                layer = self.cache.layers[index]
                keys[: len(self.rows), :, : width - old_width] = 0  # padding is masked, but must not be NaN
                values[: len(self.rows), :, : width - old_width] = 0
                keys[: len(self.rows), :, width - old_width : width] = layer.keys
                values[: len(self.rows), :, width - old_width : width] = layer.values
            for i, (layers, _) in enumerate(prefills, start=len(self.rows)):
                key, value = layers[index]
                keys[i, :, : width - key.shape[2]] = 0
                values[i, :, : width - value.shape[2]] = 0
                keys[i, :, width - key.shape[2] : width] = key[0]
                values[i, :, width - value.shape[2] : width] = value[0]
            cache.layers.append(append_layer(keys, values, width))
        self.cache, self.attention = cache, attention
        new_logits = torch.stack([logits for _, logits in prefills])
        self.logits = torch.cat([self.logits, new_logits]) if self.rows else new_logits
        self.rows = self.rows + rows

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows, and drop the leading columns no remaining row attends to."""
        if not indices:
            self.clear()
            return
        select = torch.tensor(indices, dtype=torch.long)
        self.rows = [self.rows[i] for i in indices]
        self.attention, self.logits = self.attention[select], self.logits[select]
        self.cache.batch_select_indices(select.to(self.cache.layers[0].keys.device))
        start = int((self.attention.sum(0) > 0).nonzero()[0])
        if start:
            self.attention = self.attention[:, start:]
            for layer in self.cache.layers:
                layer.drop_leading(start)


DEFAULT_PREFIX_CACHE_BYTES = 2 << 30  # context KV kept for reuse (SmolLM2-135M fp32: 46 KB a token, ~46k tokens)
MIN_PREFIX_TOKENS = 16  # a shorter common prefix is recomputed


class PrefixCache:
    """The KV cache of recent contexts, for reuse by any later context that starts with the same tokens.

    Least recently used entries go first once ``max_tokens`` would be exceeded. Entries are per-layer ``(key,
    value)`` tensors of one row, ``(1, kv_heads, length, head_dim)``, never modified after they are stored. Cached KV
    is only valid for the weights that computed it: :meth:`clear` after a weight update.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[int, ...], tuple[torch.Tensor, list]] = OrderedDict()
        self._tokens = 0
        self.hit_tokens = 0  # prompt tokens served from the cache (for tests and metrics)
        self.computed_tokens = 0  # prompt tokens computed

    def lookup(self, ids: list[int]) -> tuple[int, list]:
        """``(n, layers)``: the longest cached prefix of ``ids`` (at most ``len(ids) - 1`` tokens, so the last one is
        computed and gives the next-token logits) and the entry holding it; ``(0, [])`` for none worth reusing."""
        query = torch.tensor(ids)
        best, best_key = 0, None
        for key, (stored, _) in self._entries.items():
            n = min(len(stored), len(query))
            if n <= best:
                continue
            differ = (stored[:n] != query[:n]).nonzero()
            common = int(differ[0]) if len(differ) else n
            if common > best:
                best, best_key = common, key
        best = min(best, len(ids) - 1)
        if best < MIN_PREFIX_TOKENS or best_key is None:
            return 0, []
        self._entries.move_to_end(best_key)
        return best, self._entries[best_key][1]

    def add(self, ids: list[int], layers: list) -> None:
        key = tuple(ids)
        if self.max_tokens <= 0 or len(key) > self.max_tokens or key in self._entries:
            return
        while self._tokens + len(key) > self.max_tokens:
            evicted, _ = self._entries.popitem(last=False)
            self._tokens -= len(evicted)
        self._entries[key] = (torch.tensor(ids), layers)
        self._tokens += len(key)

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0


def kv_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of KV cache one token takes in ``model`` (every layer's key and value)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    element = next(model.parameters()).element_size()
    return max(1, config.num_hidden_layers * 2 * kv_heads * head_dim * element)


def load_model_and_tokenizer(name_or_path: str | Path, *, device: str = "cpu", dtype: str = "float32"):
    """Load through the real ``from_pretrained`` code: a hub name when online, a local path offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=torch_dtype).to(device)
    model.eval()
    return model, tokenizer


class HFLocalBackend:
    """Generate with a local transformers causal LM; safe to call from many coroutines at once."""

    def __init__(
        self,
        model_name_or_path: str | Path | None = None,
        *,
        model=None,
        tokenizer=None,
        device: str = "cpu",
        dtype: str = "float32",
        max_batch_size: int = 16,
        batch_wait_s: float = 0.005,
        seed: int = 0,
        prefix_cache_tokens: int | None = None,
        continuous: bool = True,
    ) -> None:
        """``prefix_cache_tokens``: context KV kept for reuse (:class:`PrefixCache`); default: what
        :data:`DEFAULT_PREFIX_CACHE_BYTES` holds for a model the backend loads, 0 (off) for a model passed in, whose
        weights its owner may change in place (call :meth:`clear_prefix_cache` after changing them).
        ``continuous=False`` decodes each batch to its end before the next one starts (static batching: the
        comparison in benchmarks/rollout_speed.py)."""
        loaded = model is None
        if model is None:
            if model_name_or_path is None:
                raise ValueError("give a model name or path, or a loaded model and tokenizer")
            model, tokenizer = load_model_and_tokenizer(model_name_or_path, device=device, dtype=dtype)
            use_grouped_decode(model)  # ours to change; a model passed in keeps its attention
        if tokenizer is None:
            raise ValueError("a tokenizer is required with a preloaded model")
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.continuous = continuous
        self.batch_wait_s = batch_wait_s
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.eos_ids), 0)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self._queue: asyncio.Queue[_Row] | None = None
        self._worker: asyncio.Task | None = None
        self._model_lock = threading.Lock()
        if prefix_cache_tokens is None:
            prefix_cache_tokens = DEFAULT_PREFIX_CACHE_BYTES // kv_bytes_per_token(model) if loaded else 0
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self.batch_sizes: list[int] = []  # running rows after each admission, for tests and metrics
        self.decode_steps = 0  # decode steps taken (for tests and metrics)

    def clear_prefix_cache(self) -> None:
        """Forget every cached context (after the model's weights changed)."""
        with self._model_lock:
            self.prefix_cache.clear()

    async def generate(self, prompt_ids: list[int], sampling: SamplingConfig) -> Generation:
        if not prompt_ids:
            raise ValueError("prompt_ids is empty")
        vocab = self.model.get_input_embeddings().num_embeddings
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise ValueError(f"prompt has token ids outside the vocabulary [0, {vocab})")
        if self.max_positions is not None and len(prompt_ids) >= self.max_positions:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens exceeds the model's {self.max_positions} positions")
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._serve())
        future = loop.create_future()
        await self._queue.put(self._row(prompt_ids, sampling, future))
        return await future

    @torch.no_grad()
    def _prefill_row(self, ids: list[int]) -> tuple[list, torch.Tensor]:
        """One context's per-layer KV ``(1, kv_heads, len, head_dim)`` and its next-token logits ``(vocab,)``,
        starting from the longest cached prefix; the context's KV is cached in turn."""
        from transformers import DynamicCache

        reused, layers = self.prefix_cache.lookup(ids)
        cache = DynamicCache()
        for index, (key, value) in enumerate(layers):
            cache.update(key[:, :, :reused], value[:, :, :reused], index)
        out = self.model(
            input_ids=torch.tensor([ids[reused:]], device=self.device),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=self.device),
            position_ids=torch.arange(reused, len(ids), device=self.device)[None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        row = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self.prefix_cache.hit_tokens += reused
        self.prefix_cache.computed_tokens += len(ids) - reused
        self.prefix_cache.add(ids, row)
        return row, out.logits[0, -1, :].float().cpu()

    async def _serve(self) -> None:
        """Admit what is waiting (up to ``max_batch_size`` rows), decode one token for every row, deliver the rows that
        finished; between steps the event loop serves the episodes, whose next turns join the running batch."""
        queue = self._queue
        batch = _RunningBatch()
        while True:
            rows: list[_Row] = []
            if not batch.rows:
                rows.append(await queue.get())
                await asyncio.sleep(self.batch_wait_s)  # let concurrent episodes join this batch
            admit = self.continuous or not batch.rows  # static batching admits only into an empty batch
            while admit and len(batch.rows) + len(rows) < self.max_batch_size and not queue.empty():
                rows.append(queue.get_nowait())
            if rows:
                self.batch_sizes.append(len(batch.rows) + len(rows))
            try:
                finished = await asyncio.to_thread(self._advance, batch, rows)
            except Exception as exc:  # deliver the failure to every row of the batch, keep serving
                for row in batch.rows + rows:
                    if not row.future.done():
                        row.future.set_exception(exc)
                batch = _RunningBatch()
                continue
            for row in finished:
                if not row.future.done():
                    row.future.set_result(row.generation())

    def _row(self, prompt_ids: list[int], sampling: SamplingConfig, future: asyncio.Future | None = None) -> _Row:
        budget = sampling.max_new_tokens
        if self.max_positions is not None:
            budget = min(budget, self.max_positions - len(prompt_ids))
        return _Row(list(prompt_ids), sampling, budget, future)

    def generate_batch(self, requests: list[tuple[list[int], SamplingConfig]]) -> list[Generation]:
        """Synchronous batched generation of these requests alone (handy in scripts and tests)."""
        rows = [self._row(p, s) for p, s in requests]
        batch = _RunningBatch()
        self._advance(batch, rows)
        while batch.rows:
            self._advance(batch, [])
        return [row.generation() for row in rows]

    @torch.no_grad()
    def _advance(self, batch: _RunningBatch, new_rows: list[_Row]) -> list[_Row]:
        """Prefill and admit ``new_rows``, then one decode step of the whole batch; returns the rows that finished."""
        with self._model_lock:
            if new_rows:
                batch.admit(new_rows, [self._prefill_row(row.prompt_ids) for row in new_rows])
            if not batch.rows:
                return []
            tokens, token_logprobs = self._sample(batch.logits, [row.sampling for row in batch.rows])
            running, finished = [], []
            for index, row in enumerate(batch.rows):
                token = int(tokens[index])
                row.token_ids.append(token)
                row.logprobs.append(float(token_logprobs[index]))
                if token in self.eos_ids:
                    row.finish_reason = "eos"
                elif row.sampling.stop and find_stop(self._tail_text(row.token_ids), row.sampling.stop):
                    row.finish_reason = "stop"
                elif len(row.token_ids) >= row.budget:
                    row.finish_reason = "length"
                else:
                    running.append(index)
                    continue
                finished.append(row)
            if len(running) < len(batch.rows):  # finished rows leave: later steps compute only the rest
                batch.keep(running)
                tokens = tokens[running]
            if batch.rows:
                batch.attention = torch.cat([batch.attention, torch.ones((len(batch.rows), 1), dtype=torch.long)], 1)
                out = self.model(
                    input_ids=tokens[:, None].to(self.device),
                    attention_mask=batch.attention.to(self.device),
                    position_ids=(batch.attention.sum(-1, keepdim=True) - 1).to(self.device),
                    past_key_values=batch.cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                batch.cache = out.past_key_values
                batch.logits = out.logits[:, -1, :].float().cpu()
            self.decode_steps += 1
            return finished

    def _tail_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids[-_STOP_TAIL_TOKENS:], skip_special_tokens=False)

    def _sample(self, logits: torch.Tensor, samplings: list[SamplingConfig]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample one token per row; return the tokens and their log-probs under ``softmax(logits / T)``.

        Sampling uses the Gumbel-max trick (argmax of log-probs plus Gumbel noise), which draws exactly from the
        (truncated) distribution in one vectorised pass; greedy rows (T = 0) take the argmax at T = 1.
        """
        temps = torch.tensor([s.temperature if s.temperature > 0 else 1.0 for s in samplings])
        logp = torch.log_softmax(logits / temps[:, None], dim=-1)
        scores = logp.clone()
        for row, s in enumerate(samplings):
            if s.temperature > 0 and (s.top_k > 0 or s.top_p < 1.0):
                scores[row] = _truncate(logp[row], s.top_k, s.top_p)
        uniform = torch.rand(scores.shape, generator=self.generator).clamp_(min=1e-20)
        gumbel = -torch.log(-torch.log(uniform))
        greedy = torch.tensor([s.temperature == 0 for s in samplings])
        tokens = torch.where(greedy, scores.argmax(-1), (scores + gumbel).argmax(-1))
        return tokens, logp.gather(-1, tokens[:, None])[:, 0]


def _truncate(logp: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set tokens outside top-k / the top-p nucleus to -inf (the sampled distribution, not the recorded one)."""
    sorted_logp, order = torch.sort(logp, descending=True)
    keep = torch.ones_like(sorted_logp, dtype=torch.bool)
    if top_k > 0:
        keep[top_k:] = False
    if top_p < 1.0:
        probs = sorted_logp.exp()
        keep &= (probs.cumsum(0) - probs) < top_p  # always keeps the most likely token
    out = torch.full_like(logp, float("-inf"))
    out[order[keep]] = logp[order[keep]]
    return out
