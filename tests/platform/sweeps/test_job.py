"""The sweep skeleton (`platform/sweeps/job.py`) with a toy sweep on the test Ray: the order of its steps,
its exit statuses, what it writes, and that the tracker is closed and a joined Ray left up whatever
the run does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gauntlet.platform.sweeps.job import SweepJob, run_job
from gauntlet.runtime.config_args import option
from gauntlet.runtime.tracking import REPORT_TO, Tracker, read_tensorboard


class ToyInputError(ValueError):
    """A bad toy input, found by the pre-flight."""


@dataclass(frozen=True)
class ToyConfig:
    """Flags of the toy sweep."""

    # output directory
    out: str = option(help="output directory")
    # the toy's one input: a bad one fails the pre-flight, "crash" makes the run raise
    value: str = option("ok", help="ok, bad or crash")
    # where trials are tracked
    report_to: str = option("none", help="tracker", choices=REPORT_TO)


def toy_job(seen: list[str]) -> SweepJob[ToyConfig, int, dict[str, Any]]:
    def prepare(config: ToyConfig) -> int:
        seen.append("prepare")
        if config.value == "bad":
            raise ToyInputError(f"--value {config.value!r} is not a toy value")
        return 7

    def ray_cpus(config: ToyConfig, prepared: int) -> int:
        seen.append(f"ray_cpus {prepared}")
        return 1

    def run(config: ToyConfig, prepared: int, tracker: Tracker) -> dict[str, Any]:
        import ray

        seen.append(f"run {prepared} ray={ray.is_initialized()} config.json={(Path(config.out) / 'config.json').is_file()}")
        tracker.log_scalars(1, {"trial/toy": float(prepared)})
        if config.value == "crash":
            raise RuntimeError("the toy run crashed")
        return {"prepared": prepared}

    def finish(config: ToyConfig, prepared: int, result: dict[str, Any]) -> int:
        seen.append(f"finish {result}")
        return 1 if result["prepared"] != 7 else 0

    return SweepJob(name="toy", config_type=ToyConfig, description="a toy sweep", prepare=prepare,
                    input_errors=(ToyInputError,), ray_cpus=ray_cpus, run=run, finish=finish)


def test_a_bad_input_exits_2_naming_it_before_anything_is_written(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []
    out = tmp_path / "out"
    assert run_job(toy_job(seen), ["--out", str(out), "--value", "bad"]) == 2
    assert capsys.readouterr().err.strip() == "gauntlet sweep toy: --value 'bad' is not a toy value"
    assert seen == ["prepare"] and not out.exists()


def test_a_run_goes_prepare_config_ray_run_finish(tmp_path: Path, ray_session) -> None:
    seen: list[str] = []
    out = tmp_path / "out"
    assert run_job(toy_job(seen), ["--out", str(out), "--report-to", "tensorboard"]) == 0
    assert seen == ["prepare", "ray_cpus 7", "run 7 ray=True config.json=True", "finish {'prepared': 7}"]
    assert json.loads((out / "config.json").read_text()) == {"out": str(out), "value": "ok", "report_to": "tensorboard"}
    assert read_tensorboard(out / "tensorboard")["scalars"]["trial/toy"] == [(1, 7.0)]
    assert ray_session.is_initialized(), "a Ray the sweep joined is left running"


def test_a_crashing_run_keeps_its_traceback_and_still_closes_the_tracker(tmp_path: Path, ray_session) -> None:
    seen: list[str] = []
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="the toy run crashed"):
        run_job(toy_job(seen), ["--out", str(out), "--value", "crash", "--report-to", "tensorboard"])
    assert not any(step.startswith("finish") for step in seen)
    assert read_tensorboard(out / "tensorboard")["scalars"]["trial/toy"] == [(1, 7.0)]
    assert ray_session.is_initialized()
