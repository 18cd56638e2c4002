"""The range check and the exit path every entry point shares (`runtime/config_args`)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gauntlet.runtime.config_args import require_at_least, run_command


@dataclass(frozen=True)
class _Knobs:
    steps: int = 1
    batch_size: int = 8
    rate: float = 0.5


class _KnobError(ValueError):
    pass


def test_require_at_least_names_the_first_field_below_its_minimum() -> None:
    require_at_least(_Knobs(), 1, "steps", "batch_size")  # in range: nothing raised
    with pytest.raises(ValueError, match=r"^batch_size must be >= 1, got 0$"):
        require_at_least(_Knobs(batch_size=0), 1, "steps", "batch_size")
    with pytest.raises(_KnobError, match=r"^--batch-size: must be >= 2, got 0$"):
        require_at_least(_Knobs(steps=0, batch_size=0), 2, "batch_size", "steps", error=_KnobError, as_flags=True)
    with pytest.raises(ValueError, match=r"^rate must be >= 0, got -0.5$"):
        require_at_least(_Knobs(rate=-0.5), 0, "rate")


def test_run_command_maps_expected_errors_to_their_status(capsys: pytest.CaptureFixture[str]) -> None:
    errors = {_KnobError: 2, RuntimeError: 1}
    assert run_command("gauntlet knobs", lambda: None, errors) == 0
    assert run_command("gauntlet knobs", lambda: 3, errors) == 3

    def bad_input() -> None:
        raise _KnobError("--steps: must be >= 1, got 0")

    assert run_command("gauntlet knobs", bad_input, errors) == 2
    assert capsys.readouterr().err == "gauntlet knobs: --steps: must be >= 1, got 0\n"

    def failed() -> None:
        raise RuntimeError("the run could not go on")

    assert run_command("gauntlet knobs", failed, errors) == 1
    assert capsys.readouterr().err == "gauntlet knobs: the run could not go on\n"

    def bug() -> None:
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        run_command("gauntlet knobs", bug, errors)
