"""The tiny model is a real Qwen2 checkpoint with Qwen2.5's tokenizer, chat template and special ids."""

from __future__ import annotations

from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_mem1.tiny_model import ENDOFTEXT_ID, IM_END_ID, IM_START_ID


def test_loads_with_auto_classes_and_has_qwen25_ids(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "qwen2" and model.config.vocab_size == len(tokenizer) == 151665
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        ENDOFTEXT_ID,
        IM_START_ID,
        IM_END_ID,
    ]
    assert tokenizer.eos_token_id == IM_END_ID and tokenizer.pad_token_id == ENDOFTEXT_ID
    # Qwen2.5's own ids for "system", "\n", "user", "assistant"
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert ids[:3] == [IM_START_ID, 8948, 198] and ids[-3:] == [IM_START_ID, 77091, 198]
    text = "<IS>état 日本</IS><query>Who?</query>"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_same_seed_same_weights(tmp_path, tiny_model_dir):
    from verl_mem1.tiny_model import build_tiny_model

    a = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "a", seed=0))
    b = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    c = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "c", seed=1))
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert any((p != q).any() for p, q in zip(a.parameters(), c.parameters(), strict=True))
