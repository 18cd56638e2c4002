"""The range check and the exit path every entry point shares (`runtime/config_args`)."""

from __future__ import annotations

import argparse
import contextlib
import io
from dataclasses import dataclass

import pytest

from gauntlet.runtime.config_args import (
    add_config_arguments,
    option,
    parse_config,
    require_at_least,
    run_command,
)


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


@dataclass(frozen=True)
class _Recorder:
    """Recovers from SCENES."""

    out: str = option(help="where to write")
    scenes: str = option("", help="scene database", required=True)  # has a default only to follow `out`
    run: str = option("", help="run directory; default: OUT-run")
    label: str = option("", help="a label")
    trials: int = option(1, help="per scene")

    def __post_init__(self) -> None:
        if not self.scenes:
            raise ValueError("scenes: name the scene database")
        require_at_least(self, 1, "trials")


def _help_of(field: str) -> str:
    """The --help text of one flag of _Recorder, on one line."""
    parser = argparse.ArgumentParser(prog="p", description=_Recorder.__doc__)
    add_config_arguments(parser, _Recorder)
    action = next(a for a in parser._actions if a.dest == field)
    return str(action.help)


def test_help_shows_required_flags_and_no_empty_or_repeated_default() -> None:
    assert _help_of("out") == "where to write (required)"
    assert _help_of("scenes") == "scene database (required)"
    assert _help_of("run") == "run directory; default: OUT-run"
    assert _help_of("label") == "a label"
    assert _help_of("trials") == "per scene (default: 1)"
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        parse_config(_Recorder, ["--out", "o"], "p", "")
    assert "--scenes" in err.getvalue() and "required" in err.getvalue()


def test_a_config_error_names_the_flag_the_user_typed() -> None:
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        parse_config(_Recorder, ["--out", "o", "--scenes", "db", "--trials", "0"], "p", "")
    assert "p: error: --trials must be >= 1, got 0" in err.getvalue()
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        parse_config(_Recorder, ["--out", "o", "--scenes", ""], "p", "")
    assert "p: error: --scenes: name the scene database" in err.getvalue()
    assert parse_config(_Recorder, ["--out", "o", "--scenes", "db"], "p", "") == _Recorder(out="o", scenes="db")
