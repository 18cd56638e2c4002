"""scripts/install.sh picks CPU or CUDA builds of torch and JAX; its plan mode makes that choice testable
without a GPU (and without touching any venv): a fake `nvidia-smi` stands in for a GPU machine."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install.sh"
CPU_TORCH = "torch==2.13.0"
CUDA_TORCH = "torch==2.14.1"
CUDA_JAX = "jax[cuda13]"


H200 = "#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-x)'\n"
# What nvidia-smi says on a machine whose driver is not loaded: a GPU may be there, but not usable.
NO_DRIVER = '#!/bin/sh\necho "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n'


def _plan(
    tmp_path: Path, *, gpu: bool, accel: str | None = None, nvidia_smi: str = H200
) -> subprocess.CompletedProcess[str]:
    """Run the real script in plan mode, with a fake `nvidia-smi` (by default one listing an H200) first
    on PATH when `gpu`, and with no `nvidia-smi` at all otherwise (so a real one on the test machine
    cannot change the answer)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if gpu:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(nvidia_smi)
        fake.chmod(0o755)
    # Only the tools the script needs, linked into one folder: PATH then holds no real nvidia-smi.
    for tool in ("grep", "dirname"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAUNTLET_")}
    env["PATH"] = str(bin_dir)
    env["GAUNTLET_INSTALL_PLAN"] = "1"
    if accel is not None:
        env["GAUNTLET_ACCEL"] = accel
    bash = shutil.which("bash")
    assert bash
    return subprocess.run([bash, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def _pip_lines(out: str) -> list[list[str]]:
    return [shlex.split(line)[2:] for line in out.splitlines() if line.startswith("pip install ")]


def _requirements(out: str) -> set[str]:
    return {arg for args in _pip_lines(out) for arg in args if not arg.startswith("-")}


def _stamp() -> tuple[bool, str | None]:
    stamp = ROOT / ".venv" / ".gauntlet-installed"
    return stamp.exists(), stamp.read_text() if stamp.exists() else None


def test_no_gpu_plans_the_cpu_builds(tmp_path: Path) -> None:
    before = _stamp()
    result = _plan(tmp_path, gpu=False)
    assert result.returncode == 0, result.stderr
    assert "[install] mode: cpu (no GPU listed by nvidia-smi -L)" in result.stdout
    reqs = _requirements(result.stdout)
    assert CPU_TORCH in reqs
    assert not any("cuda" in r for r in reqs)
    assert CUDA_TORCH not in reqs
    # torch first, before the project pulls in anything that depends on it.
    lines = _pip_lines(result.stdout)
    assert lines[1] == [CPU_TORCH]
    assert lines[2] == ["-e", ".[dev]"]
    assert ["--no-deps", "robosuite==1.5.2"] in lines
    assert _stamp() == before  # a plan installs nothing and stamps nothing


def test_a_listed_gpu_plans_the_cuda_builds(tmp_path: Path) -> None:
    result = _plan(tmp_path, gpu=True)
    assert result.returncode == 0, result.stderr
    assert "[install] mode: cuda (nvidia-smi -L lists a GPU)" in result.stdout
    lines = _pip_lines(result.stdout)
    # CUDA torch and CUDA JAX in one pip call, so they resolve one shared set of CUDA libraries.
    assert lines[1] == [CUDA_TORCH, CUDA_JAX]
    assert CPU_TORCH not in _requirements(result.stdout)


def test_an_nvidia_smi_without_a_driver_plans_cpu(tmp_path: Path) -> None:
    result = _plan(tmp_path, gpu=True, nvidia_smi=NO_DRIVER)
    assert result.returncode == 0, result.stderr
    assert "[install] mode: cpu (no GPU listed by nvidia-smi -L)" in result.stdout
    assert CPU_TORCH in _requirements(result.stdout)


@pytest.mark.parametrize("gpu", [True, False])
@pytest.mark.parametrize("accel", ["cpu", "cuda"])
def test_an_explicit_mode_overrides_detection(tmp_path: Path, gpu: bool, accel: str) -> None:
    result = _plan(tmp_path, gpu=gpu, accel=accel)
    assert result.returncode == 0, result.stderr
    assert f"[install] mode: {accel} (GAUNTLET_ACCEL={accel})" in result.stdout
    reqs = _requirements(result.stdout)
    if accel == "cpu":
        assert CPU_TORCH in reqs and not any("cuda" in r for r in reqs)
    else:
        assert {CUDA_TORCH, CUDA_JAX} <= reqs and CPU_TORCH not in reqs


def test_an_unknown_mode_fails_naming_the_switch(tmp_path: Path) -> None:
    result = _plan(tmp_path, gpu=True, accel="bogus")
    assert result.returncode != 0
    assert "GAUNTLET_ACCEL" in result.stderr and "bogus" in result.stderr
    assert "pip install" not in result.stdout
