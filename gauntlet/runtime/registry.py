"""The one registry style: a name -> entry table for tasks, error types, classifiers, policy families,
training recipes and fusion methods.

Each registry is a `Registry` whose entries are frozen dataclasses (or functions) registered once, at
import of the module that defines them. A second entry under one name is a programming error; an
unknown name is a user's error and gets an `UnknownNameError` listing the known names. Entries whose
code imports a heavy framework name it as `"module:attribute"` and load it with `import_object` on
first use, so listing a registry never imports torch or JAX.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

EntryT = TypeVar("EntryT")


class UnknownNameError(ValueError):
    """A name no entry of a registry has; the message lists the names it has."""

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...]):
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(known)}")
        self.kind = kind  # what the registry holds, e.g. "task", "policy family"
        self.name = name  # the name asked for
        self.known = tuple(known)  # the names registered, in registration order


class Registry(Mapping[str, EntryT], Generic[EntryT]):
    """Entries by name, in registration order. Read-only as a Mapping; `register` adds."""

    def __init__(self, kind: str):
        self.kind = kind  # what it holds, used in error messages ("task", "error type", ...)
        self._entries: dict[str, EntryT] = {}

    def register(self, name: str, entry: EntryT) -> EntryT:
        """Adds `entry` under `name` and returns it (so it can decorate)."""
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def lookup(self, name: str) -> EntryT:
        """The entry called `name`, or an `UnknownNameError` listing the known names."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, tuple(self._entries)) from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __getitem__(self, name: str) -> EntryT:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


def import_object(path: str) -> Any:
    """`"package.module:attribute"` -> the attribute, importing the module (a lazy registry entry)."""
    module, sep, attribute = path.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"{path!r} is not 'module:attribute'")
    return getattr(importlib.import_module(module), attribute)
