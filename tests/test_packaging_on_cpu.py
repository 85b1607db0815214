"""What installs and what ships: the GPU extra pinned as verl pins its own GPU stack, verl's v1 trainer importable
from the base install, and the folders runs write left out of git and of a Ray job's upload."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib.metadata import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def project() -> dict:
    import tomllib  # Python 3.11+

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def verl_extra(name: str) -> dict[str, Requirement]:
    """verl's installed metadata: the requirements of one of its extras, by package name."""
    out = {}
    for line in metadata("verl").get_all("Requires-Dist"):
        req = Requirement(line)
        if req.marker is not None and req.marker.evaluate({"extra": name}) and not req.marker.evaluate({"extra": ""}):
            out[req.name.lower()] = req
    return out


def test_gpu_extra_pins_what_verls_vllm_extra_pins():
    ours = {Requirement(r).name.lower(): Requirement(r) for r in project()["optional-dependencies"]["gpu"]}
    verl_vllm = verl_extra("vllm")
    for name in ("torch", "transformers", "vllm"):
        assert str(ours[name].specifier) == str(verl_vllm[name].specifier), name
    extras = (verl_extra(e) for e in metadata("verl").get_all("Provides-Extra"))
    flash = next(r for r in extras if "flash-attn" in r)
    # flash-attn is installed by make install-gpu after torch (its build imports torch): pinned there as verl pins it
    assert "flash-attn" not in ours
    pinned = re.search(r"^FLASH_ATTN_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert pinned and str(flash["flash-attn"].specifier) == f"=={pinned.group(1)}"
    # and the pinned transformers is one the base install accepts
    base = {Requirement(r).name.lower(): Requirement(r) for r in project()["dependencies"]}
    assert base["transformers"].specifier.contains(str(ours["transformers"].specifier).lstrip("="))


def test_base_install_carries_verls_v1_trainer_dependencies():
    base = {Requirement(r).name.lower(): Requirement(r) for r in project()["dependencies"]}
    core = verl_extra("verl-core")
    for name in ("transferqueue", "pyzmq", "msgspec"):
        assert name in base, name
    assert str(base["transferqueue"].specifier) == str(core["transferqueue"].specifier)
    # what main_ppo's TaskRunnerV1 imports (the default trainer.use_v1=true)
    code = "import transfer_queue; from verl.trainer.ppo.v1 import AgentLoopManagerTQ, get_trainer_cls"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)


def _make_dry_run(*args: str) -> str:
    """The commands ``make -B -n`` would run (every target out of date): what a target depends on, as make sees it."""
    return subprocess.run(["make", "-B", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_make_install_gpu_builds_flash_attn_after_torch_and_leaves_one_faiss():
    """Issue 23, findings 1 and 3: `pip install -e ".[gpu]"` with flash-attn in it failed (its source build imports
    torch; pip's isolated build has none), and faiss-cpu's module shadowed faiss-gpu's. The order, as make runs it."""
    steps = [
        line.strip() for line in _make_dry_run("install-gpu").splitlines() if "pip " in line or "import faiss" in line
    ]
    gpu_steps = steps[[i for i, s in enumerate(steps) if '.[gpu]"' in s][0] :]
    assert 'pip install -e ".[gpu]"' in gpu_steps[0]
    assert "--no-build-isolation" in gpu_steps[1] and '"flash-attn==' in gpu_steps[1]
    assert "uninstall -y faiss-cpu" in gpu_steps[2]
    assert "--force-reinstall --no-deps faiss-gpu-cu12" in gpu_steps[3]
    assert "StandardGpuResources" in gpu_steps[4]
    assert not any("flash-attn" in s for s in steps if "--no-build-isolation" not in s)


def test_make_install_gpu_uses_the_pinned_extra_and_training_targets_need_it():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r'\.installed-gpu: .*\n\t\$\(BIN\)/pip install -e "\.\[gpu\]"', makefile)
    assert "-m verl_mem1.train" in makefile
    for target in ("train-qa", "train-webshop"):
        gpu = _make_dry_run(target)
        assert 'pip install -e ".[gpu]"' in gpu, target  # GPU training installs the pinned GPU stack first
        assert "-m verl_mem1.train" in gpu and "+platform=cpu" not in gpu  # start-up checks, then main_ppo
        cpu = _make_dry_run(target, "PLATFORM=cpu")  # verl's trainer on CPU: no GPU stack, SmolLM2, the overlay
        assert ".[gpu]" not in cpu, target
        assert "mem1 model smollm2" in cpu and "VERL_PLATFORM=cpu" in cpu and "+platform=cpu" in cpu, target


def test_the_training_targets_command_lines_parse_as_hydra_parses_them():
    """``make train-qa`` passed overrides both before and after ``--config-name``: Hydra's parser (argparse, its
    overrides one positional list) refused the later ones, so neither target ever started, on GPU or CPU."""
    import shlex

    from hydra._internal.utils import get_args_parser

    for target in ("train-qa", "train-webshop"):
        for platform in ("gpu", "cpu"):
            lines = _make_dry_run(target, f"PLATFORM={platform}").replace("\\\n", " ").splitlines()
            line = next(line for line in lines if "-m verl_mem1.train" in line)
            argv = shlex.split(line.split("-m verl_mem1.train", 1)[1])
            args = get_args_parser().parse_args(argv)  # SystemExit(2) where argparse refuses the command line
            assert args.config_name == target.removeprefix("train-"), (target, platform)
            assert any(o.startswith("data.train_files=") for o in args.overrides), (target, platform)
            assert ("+platform=cpu" in args.overrides) == (platform == "cpu"), (target, platform)


def test_run_outputs_stay_out_of_git_and_of_a_ray_jobs_upload(tmp_path):
    """``ray job submit --working-dir .`` uploads what Ray's packaging walk keeps; it reads .gitignore."""
    from ray._private.runtime_env.packaging import _dir_travel

    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    kept = ["recipes/qa.yaml", "verl_mem1/data/hotpotqa/train.jsonl", "env_servers/webshop/bundled/items.json"]
    dropped = ["data/qa/train.parquet", "idx/index.faiss", "checkpoints/MEM1/run/actor.pt", "outputs/learn/x.jsonl"]
    for rel in kept + dropped:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    seen: list[str] = []
    _dir_travel(tmp_path, [], lambda p: seen.append(p.relative_to(tmp_path).as_posix()), include_gitignore=True)
    assert set(kept) <= set(seen)
    assert not set(dropped) & set(seen)


def test_setup_py_is_a_shim_over_pyproject():
    result = subprocess.run(
        [sys.executable, "setup.py", "--name", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == [project()["name"], project()["version"]]


def test_make_test_runs_both_tiers_on_two_workers_and_prints_the_slowest():
    """CI's entry point runs the README's test command; every run prints its slowest tests so their growth shows."""
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    full, fast = _make_dry_run("test"), _make_dry_run("test-fast")
    for commands in (full, fast):
        pytest_line = next(line for line in commands.splitlines() if "/pytest " in line)
        assert "--durations=15" in pytest_line and "-n 2 --dist loadfile" in pytest_line, pytest_line
        assert "ruff check" in commands and "ruff format --check" in commands
    assert '-m "not e2e and not gpu"' in fast and "not e2e" not in full
