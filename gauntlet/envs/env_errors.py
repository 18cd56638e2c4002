"""Typed errors of the env layer (the simulator and scene databases, not the errors injected into
episodes). Each says what went wrong and what to do about it. An unknown task, variant, error type
or camera is a `gauntlet.runtime.registry.UnknownNameError`."""

from __future__ import annotations


class GauntletEnvError(Exception):
    """Base class for env-layer errors."""


class EnvironmentMismatchError(GauntletEnvError):
    """A scene was captured under a different environment (model XML or dynamics settings).

    Restoring it would replay different physics, so the caller decides: skip it and record why.
    """

    def __init__(self, scene_id: str, expected: str, actual: str):
        super().__init__(
            f"scene {scene_id!r} was captured with env fingerprint {expected[:16]}… but the current env "
            f"has {actual[:16]}…; regenerate the scene or evaluate with the code version that made it"
        )
        self.scene_id = scene_id
        self.expected = expected
        self.actual = actual
