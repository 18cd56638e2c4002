"""scripts/install.sh picks a Python 3.12 interpreter and CPU or CUDA builds of JAX beside one torch; its
plan mode makes those choices testable without a GPU (and without touching any venv): a fake `nvidia-smi`
stands in for a GPU machine, fake `python3.12`s for the interpreters a machine may have."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install.sh"
TORCH = "torch==2.11.0"  # one build for both modes: the newest release lerobot 0.6.1 accepts
CUDA_JAX = "jax[cuda13]"


H200 = "#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-x)'\n"
# What nvidia-smi says on a machine whose driver is not loaded: a GPU may be there, but not usable.
NO_DRIVER = '#!/bin/sh\necho "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n'


def _fake_python(path: Path, version: str) -> Path:
    """An executable that answers the script's version probe as Python `version` would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def _plan(
    tmp_path: Path, *, gpu: bool, accel: str | None = None, nvidia_smi: str = H200,
    python_on_path: bool = True, env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real script in plan mode, with a fake `nvidia-smi` (by default one listing an H200) first
    on PATH when `gpu`, and with no `nvidia-smi` at all otherwise (so a real one on the test machine
    cannot change the answer). A fake `python3.12` is on PATH when `python_on_path`; HOME and PYENV_ROOT
    point into `tmp_path`, so the machine's own interpreters never decide the answer."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    if python_on_path:
        _fake_python(bin_dir / "python3.12", "3.12")
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
    env["HOME"] = str(tmp_path / "home")
    env["PYENV_ROOT"] = str(tmp_path / "pyenv")
    env.pop("PYTHON", None)
    env.update(env_extra or {})
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
    assert TORCH in reqs
    assert not any("cuda" in r for r in reqs)
    # torch first, before the project pulls in anything that depends on it.
    lines = _pip_lines(result.stdout)
    assert lines[1] == [TORCH]
    assert lines[2] == ["-e", ".[dev]"]
    assert ["--no-deps", "robosuite==1.5.2"] in lines
    assert _stamp() == before  # a plan installs nothing and stamps nothing


def test_a_listed_gpu_plans_the_cuda_builds(tmp_path: Path) -> None:
    result = _plan(tmp_path, gpu=True)
    assert result.returncode == 0, result.stderr
    assert "[install] mode: cuda (nvidia-smi -L lists a GPU)" in result.stdout
    lines = _pip_lines(result.stdout)
    # CUDA torch and CUDA JAX in one pip call, so they resolve one shared set of CUDA libraries.
    assert lines[1] == [TORCH, CUDA_JAX]


def test_an_nvidia_smi_without_a_driver_plans_cpu(tmp_path: Path) -> None:
    result = _plan(tmp_path, gpu=True, nvidia_smi=NO_DRIVER)
    assert result.returncode == 0, result.stderr
    assert "[install] mode: cpu (no GPU listed by nvidia-smi -L)" in result.stdout
    assert CUDA_JAX not in _requirements(result.stdout)


@pytest.mark.parametrize("gpu", [True, False])
@pytest.mark.parametrize("accel", ["cpu", "cuda"])
def test_an_explicit_mode_overrides_detection(tmp_path: Path, gpu: bool, accel: str) -> None:
    result = _plan(tmp_path, gpu=gpu, accel=accel)
    assert result.returncode == 0, result.stderr
    assert f"[install] mode: {accel} (GAUNTLET_ACCEL={accel})" in result.stdout
    reqs = _requirements(result.stdout)
    if accel == "cpu":
        assert TORCH in reqs and not any("cuda" in r for r in reqs)
    else:
        assert {TORCH, CUDA_JAX} <= reqs


def test_an_unknown_mode_fails_naming_the_switch(tmp_path: Path) -> None:
    result = _plan(tmp_path, gpu=True, accel="bogus")
    assert result.returncode != 0
    assert "GAUNTLET_ACCEL" in result.stderr and "bogus" in result.stderr
    assert "pip install" not in result.stdout


def test_python_on_path_is_the_interpreter(tmp_path: Path) -> None:
    result = _plan(tmp_path, gpu=False)
    assert result.returncode == 0, result.stderr
    assert f"[install] python: {tmp_path / 'bin' / 'python3.12'}" in result.stdout


def test_a_pyenv_version_is_found_when_path_has_none(tmp_path: Path) -> None:
    # A shim-like python3.12 that cannot answer (pyenv's shim without PYENV_VERSION) is passed over.
    broken = tmp_path / "bin" / "python3.12"
    found = _fake_python(tmp_path / "pyenv" / "versions" / "3.12.1" / "bin" / "python3.12", "3.12")
    _fake_python(tmp_path / "pyenv" / "versions" / "3.11.7" / "bin" / "python3.11", "3.11")
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\nexit 127\n")
    broken.chmod(0o755)
    result = _plan(tmp_path, gpu=False, python_on_path=False)
    assert result.returncode == 0, result.stderr
    assert f"[install] python: {found}" in result.stdout


def test_no_python_312_says_what_to_install(tmp_path: Path) -> None:
    _fake_python(tmp_path / "pyenv" / "versions" / "3.11.7" / "bin" / "python3.11", "3.11")
    result = _plan(tmp_path, gpu=False, python_on_path=False)
    assert result.returncode == 2
    assert "no Python 3.12 found" in result.stderr
    assert "pyenv install 3.12" in result.stderr and "PYTHON=" in result.stderr
    assert "pip install" not in result.stdout


def test_python_override_must_be_312(tmp_path: Path) -> None:
    wrong = _fake_python(tmp_path / "py311" / "python", "3.11")
    result = _plan(tmp_path, gpu=False, env_extra={"PYTHON": str(wrong)})
    assert result.returncode == 2
    assert f"PYTHON={wrong} is Python 3.11" in result.stderr
    right = _fake_python(tmp_path / "py312" / "python", "3.12")
    result = _plan(tmp_path / "again", gpu=False, env_extra={"PYTHON": str(right)})
    assert result.returncode == 0, result.stderr
    assert f"[install] python: {right}" in result.stdout
