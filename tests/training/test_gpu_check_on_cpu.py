"""``make gpu-check`` in its CPU ("dry") mode: the script runs, what needs no CUDA passes for real (packed vs per-turn
log-probs in fp32, the GPU tests collected), the CUDA steps are reported as skipped, and without CUDA a real run is
refused rather than reported green."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def test_dry_run_reports_every_step_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    names = ["environment", "gpu_tests", "parity_fp32", "real_shapes_bf16", "flash_varlen", "engine_path", "packing"]
    assert list(steps) == names
    assert steps["environment"]["status"] == "passed"
    assert {"cuda", "driver", "driver_problem"} <= set(steps["environment"])  # reported first
    assert steps["gpu_tests"]["status"] == "passed" and "collected" in steps["gpu_tests"]["summary"]
    assert steps["gpu_tests"]["left_out"] == [] and "deselected" not in steps["gpu_tests"]["summary"]
    assert steps["parity_fp32"]["status"] == "passed"
    assert max(steps["parity_fp32"]["max_abs_diff"].values()) <= 1e-4
    assert steps["engine_path"]["status"] == "passed" and steps["engine_path"]["max_abs_diff"] <= 1e-4
    for name in ("real_shapes_bf16", "flash_varlen", "packing"):
        assert steps[name]["status"] == "skipped"


def _import_gpu_check():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return gpu_check


def _requirement_closure(roots: list[str]) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions ``roots`` need, by their declared requirements (no extras), roots included."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    environment, found, todo = {**default_environment(), "extra": ""}, {}, list(roots)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        found[key] = dist = importlib.metadata.distribution(name)
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(requirement.name)
    return found


def torch_transformers_venv(path: Path) -> Path:
    """A venv holding only torch, transformers and what they require: the GPU machine ``make gpu-check`` is written
    for (no verl, Ray, pytest, vLLM). Built offline from this environment's own files (links), in seconds.

    Returns:
        The venv's python.
    """
    venv.create(path, with_pip=False)
    site = next(path.glob("lib/python*/site-packages"))
    for dist in _requirement_closure(["torch", "transformers"]).values():
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            source, target = Path(dist.locate_file(top)), site / top
            if source.exists() and not target.exists() and not top.endswith(".pth"):
                target.symlink_to(source)
    return path / "bin" / "python"


def test_dry_run_in_a_venv_with_only_torch_and_transformers_on_cpu(tmp_path):
    """Issue 23, finding 8: ``make gpu-check --dry`` as on the GPU machine (the machine's python, the source tree on
    PYTHONPATH, neither verl nor pytest installed): what needs no CUDA passes, the test step says pytest is absent."""
    python = torch_transformers_venv(tmp_path / "venv")
    modules = ("torch", "transformers", "verl", "ray", "pytest")
    probe = f"import importlib.util as u; print([m for m in {modules!r} if u.find_spec(m)])"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120)
    assert found.stdout.strip() == "['torch', 'transformers']", found.stderr[-2000:]
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(
        [str(python), str(SCRIPT), "--dry", "--out", str(out)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    assert {steps[name]["status"] for name in ("environment", "parity_fp32", "engine_path")} == {"passed"}
    assert steps["gpu_tests"] == {**steps["gpu_tests"], "status": "skipped", "reason": "pytest is not installed"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_a_real_run_without_cuda_is_refused_on_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2 and "no CUDA device" in result.stderr


def test_a_cuda_build_newer_than_the_driver_is_named_first_on_cpu():
    """Issue 23, finding 2: torch 2.11 from PyPI is a CUDA 13.0 build (driver >= 580); on a 535-570 node the check
    says so before anything else, with the fix."""
    gpu_check = _import_gpu_check()

    problem = gpu_check.driver_problem("13.0", "550.54.15")
    assert problem and "needs NVIDIA driver >= 580" in problem and "550.54.15" in problem
    assert gpu_check.driver_problem("13.0", "580.65.06") is None
    assert gpu_check.driver_problem("12.8", "550.54.15") is None
    assert gpu_check.driver_problem("12.4", "470.1") is not None
    assert gpu_check.driver_problem(None, "550.1") is None and gpu_check.driver_problem("13.0", None) is None


def test_the_check_resolves_the_attention_backend_as_the_engines_do_on_cpu(monkeypatch):
    from verl_mem1.config import ATTENTION_ENV
    from verl_mem1.training import attention
    from verl_mem1.training.attention import attention_backend

    gpu_check = _import_gpu_check()
    monkeypatch.delenv(ATTENTION_ENV, raising=False)
    for implementation in ("flash_attn", "torch_varlen", None):
        monkeypatch.setattr(attention, "flash_varlen_implementation", lambda found=implementation: found)
        for device in ("cuda", "cpu"):
            assert gpu_check._auto_backend(device) == attention_backend("auto", device), (implementation, device)


def test_the_gpu_test_list_names_every_gpu_test_file_on_cpu():
    """Issue 23, finding 8: the GPU step collects only the files with CUDA tests (collecting ``tests`` imports verl,
    Ray and the rest, which the GPU machine need not have); a new GPU test file must join the list."""
    gpu_check = _import_gpu_check()

    marked = {
        str(path.relative_to(REPO))
        for path in (REPO / "tests").rglob("test_*.py")
        if "pytest.mark.gpu" in path.read_text() and path.name != Path(__file__).name
    }
    assert marked == set(gpu_check.GPU_TEST_FILES)
