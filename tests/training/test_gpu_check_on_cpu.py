"""``make gpu-check`` in its CPU ("dry") mode: the script runs, what needs no CUDA passes for real (packed vs per-turn
log-probs in fp32, the GPU tests collected), the CUDA steps are reported as skipped, and without CUDA a real run is
refused rather than reported green."""

from __future__ import annotations

import json
import subprocess
import sys
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
    assert list(steps) == ["environment", "gpu_tests", "parity_fp32", "real_shapes_bf16", "flash_varlen", "packing"]
    assert steps["environment"]["status"] == "passed"
    assert {"cuda", "driver", "driver_problem"} <= set(steps["environment"])  # reported first
    assert steps["gpu_tests"]["status"] == "passed" and "collected" in steps["gpu_tests"]["summary"]
    assert steps["gpu_tests"]["left_out"] == [] and "deselected" not in steps["gpu_tests"]["summary"]
    assert steps["parity_fp32"]["status"] == "passed"
    assert max(steps["parity_fp32"]["max_abs_diff"].values()) <= 1e-4
    for name in ("real_shapes_bf16", "flash_varlen", "packing"):
        assert steps[name]["status"] == "skipped"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_a_real_run_without_cuda_is_refused_on_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2 and "no CUDA device" in result.stderr


def test_a_cuda_build_newer_than_the_driver_is_named_first_on_cpu():
    """Issue 23, finding 2: torch 2.11 from PyPI is a CUDA 13.0 build (driver >= 580); on a 535-570 node the check
    says so before anything else, with the fix."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))

    problem = gpu_check.driver_problem("13.0", "550.54.15")
    assert problem and "needs NVIDIA driver >= 580" in problem and "550.54.15" in problem
    assert gpu_check.driver_problem("13.0", "580.65.06") is None
    assert gpu_check.driver_problem("12.8", "550.54.15") is None
    assert gpu_check.driver_problem("12.4", "470.1") is not None
    assert gpu_check.driver_problem(None, "550.1") is None and gpu_check.driver_problem("13.0", None) is None


def test_the_gpu_test_list_names_every_gpu_test_file_on_cpu():
    """Issue 23, finding 8: the GPU step collects only the files with CUDA tests (collecting ``tests`` imports verl,
    Ray and the rest, which the GPU machine need not have); a new GPU test file must join the list."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))

    marked = {
        str(path.relative_to(REPO))
        for path in (REPO / "tests").rglob("test_*.py")
        if "pytest.mark.gpu" in path.read_text() and path.name != Path(__file__).name
    }
    assert marked == set(gpu_check.GPU_TEST_FILES)
