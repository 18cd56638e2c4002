"""Fixtures shared by the platform tests: small real scene databases."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def generate_scenes() -> Callable[..., Path]:
    """`generate_scenes(out, variants=..., error_types=..., workers=...)`: a lift scene DB via the CLI."""
    from gauntlet.platform.cli import main as cli

    def generate(out: Path, *, variants: str, error_types: str, workers: int = 2) -> Path:
        assert cli(["scenes", "generate", "--out", str(out), "--tasks", "lift", "--variants", variants,
                    "--error-types", error_types, "--workers", str(workers), "--no-validate"]) == 0
        return out

    return generate
