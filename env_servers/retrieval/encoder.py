"""Dense query/passage encoders for retrieval: a Hugging Face encoder, pooled (mean, as E5 is trained, or CLS, as BGE)
and L2-normalised, so inner product is cosine similarity; with each family's query/passage prefixes."""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BGE_QUERY_PREFIX = "Represent this sentence for searching relevant passages: "
POOLINGS = ("mean", "cls")


def encoder_prefixes(encoder: str) -> tuple[str, str]:
    """Query/passage prefixes the encoder family was trained with, as Search-R1 adds them (by the model's name):
    E5 ``query: `` / ``passage: ``, BGE an instruction before queries only."""
    name = Path(encoder).name.lower()
    if "e5" in name:
        return "query: ", "passage: "
    if "bge" in name:
        return BGE_QUERY_PREFIX, ""
    return "", ""


def default_pooling(encoder: str) -> str:
    """How the family pools its last hidden state: BGE its [CLS] token, E5 and others the mean over tokens."""
    return "cls" if "bge" in Path(encoder).name.lower() else "mean"


def _resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


@functools.lru_cache(maxsize=2)
def _load_hf_encoder(name_or_path: str, device: str) -> tuple[Any, Any]:
    """Tokenizer and model, cached: building an index and then serving it in one process (tests, notebooks)
    should not load a large-vocabulary tokenizer twice. Both are only read from afterwards."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:  # decoder-only checkpoints often ship without one
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model = AutoModel.from_pretrained(name_or_path, dtype=torch.float32).to(device).eval()
    return tokenizer, model


# encoders whose positions start at 0 for every text and that take a (batch, 1, T, T) attention mask: packable
PACKABLE_MODEL_TYPES = ("bert",)
PACKED_ROW_TOKENS = 128  # tokens per packed row of queries (a few questions each): see DenseEncoder.encode_packed


class DenseEncoder:
    """A Hugging Face encoder producing pooled (mean or [CLS]), L2-normalised fp32 embeddings."""

    def __init__(
        self, name_or_path: str, *, max_length: int = 256, device: str | None = None, pooling: str = "mean"
    ) -> None:
        import torch

        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; one of {', '.join(POOLINGS)}")
        self.device = _resolve_device(device)
        self.max_length = max_length
        self.pooling = pooling
        self.tokenizer, self.model = _load_hf_encoder(name_or_path, self.device)
        if self.model.config.model_type in PACKABLE_MODEL_TYPES:  # BERT cannot see past its position table
            self.max_length = min(max_length, self.model.config.max_position_embeddings)
        self._torch = torch

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        show_progress: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` in batches (longest first, so padding is small); returns ``(len(texts), dim)``.
        ``on_batch(n)`` is called after each batch of ``n`` texts (an outer progress bar)."""
        from tqdm.auto import tqdm

        torch = self._torch
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="encoding", unit="batch", disable=not show_progress):
            idx = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)
            out[idx] = pooled.cpu().numpy()
            if on_batch is not None:
                on_batch(len(idx))
        return out

    def encode_packed(self, texts: Sequence[str], *, max_tokens: int = PACKED_ROW_TOKENS) -> np.ndarray:
        """Embed short texts (queries) with almost no padding: packed end to end into rows of about ``max_tokens``
        tokens (as many rows as the tokens need, balanced), all rows in one forward pass, each text attending only to
        itself with its positions from 0, so each embedding is the one it has alone (within float rounding) at the
        cost of the real tokens only. Short rows keep attention's cost down: it grows with the square of a row's
        length. BERT-family encoders (E5, BGE, MiniLM) only; others (decoder models, RoBERTa's shifted positions)
        are encoded padded, 16 at a time.

        Returns:
            ``(len(texts), dim)`` float32, L2-normalised.
        """
        if self.model.config.model_type not in PACKABLE_MODEL_TYPES:
            return self.encode(texts, batch_size=16)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        torch = self._torch
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        # As few rows as the tokens need, balanced (longest text first into the emptiest row), so that padding every
        # row to the longest one wastes little.
        num_rows = math.ceil(sum(map(len, ids)) / max_tokens)
        rows: list[list[int]] = [[] for _ in range(num_rows)]
        fill = [(0, r) for r in range(num_rows)]  # a heap of (tokens, row)
        for i in sorted(range(len(ids)), key=lambda i: -len(ids[i])):
            used, r = heapq.heappop(fill)
            rows[r].append(i)
            heapq.heappush(fill, (used + len(ids[i]), r))
        width = max(used for used, _ in fill)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        positions = torch.zeros(len(rows), width, dtype=torch.long)
        owner = -1 - torch.arange(width).repeat(len(rows), 1)  # the text each token belongs to; padding: itself
        first = torch.empty(len(texts), dtype=torch.long)  # where each text starts in the flattened rows
        for r, row in enumerate(rows):
            column = 0
            for i in row:
                n = len(ids[i])
                input_ids[r, column : column + n] = torch.tensor(ids[i])
                positions[r, column : column + n] = torch.arange(n)
                owner[r, column : column + n] = i
                first[i] = r * width + column
                column += n
        mask = (owner[:, :, None] == owner[:, None, :])[:, None]  # (rows, 1, width, width): each text sees itself
        with torch.inference_mode():
            hidden = self.model(
                input_ids=input_ids.to(self.device),
                position_ids=positions.to(self.device),
                attention_mask=mask.to(self.device),
            ).last_hidden_state.flatten(0, 1)  # (rows * width, hidden)
        if self.pooling == "cls":  # each text's first token
            pooled = hidden[first.to(self.device)].float()
        else:
            owner = owner.flatten().to(self.device)
            real = owner >= 0
            sums = torch.zeros(len(texts), hidden.shape[-1], device=self.device, dtype=hidden.dtype)
            sums.index_add_(0, owner[real], hidden[real])
            lengths = torch.tensor([len(x) for x in ids], dtype=torch.float32, device=self.device)
            pooled = sums.float() / lengths[:, None]
        return torch.nn.functional.normalize(pooled, p=2, dim=-1).cpu().numpy()
