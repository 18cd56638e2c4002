"""The `gauntlet` console script: one entry point, sub-commands with --help."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gauntlet.platform.cli import main

GAUNTLET = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "gauntlet"


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for words in ("scenes generate", "scenes check", "scenes show", "serve", "eval", "train", "sweep fusion"):
        assert words in out


@pytest.mark.parametrize("command", [["scenes", "generate"], ["scenes", "check"], ["scenes", "show"], ["demo"]])
def test_subcommand_help_explains_every_flag(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: gauntlet" in out and "--help" in out


def test_unknown_command_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    # `make test` always runs from the installed .venv, so the entry point must be there.
    assert GAUNTLET.exists(), f"{GAUNTLET} missing: run scripts/install.sh"
    out = subprocess.run([str(GAUNTLET), "--help"], capture_output=True, text=True, check=True)
    assert "scenes generate" in out.stdout
