"""Frozen-dataclass configs <-> argparse.

Every entry point has one frozen dataclass config. Each field is declared with `option(...)`, whose
help text becomes the flag's `--help`, so the config is the single place a knob is documented.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    positional: bool = False,
    choices: tuple[Any, ...] | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field that documents itself on the command line.

    `flag` overrides the derived `--field-name`; `aliases` keep old spellings working;
    `positional` makes it a positional argument.
    """
    meta = {"help": help, "flag": flag, "aliases": aliases, "positional": positional, "choices": choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(scalar type, is_sequence) for a field annotation like `int`, `str | None`, `tuple[str, ...]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else (str, False)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return (args[0] if args else str), True
    return tp, False


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Adds one argument per field of the dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        meta = f.metadata or {}
        tp, is_seq = _base_type(hints[f.name])
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        help_text = meta.get("help", "")
        if has_default and default not in (None, False, (), []):
            help_text = f"{help_text} (default: {default})"
        kwargs: dict[str, Any] = {"help": help_text, "dest": f.name}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("positional"):
            kwargs.pop("dest")
            if is_seq:
                kwargs["nargs"] = "+" if not has_default else "*"
            elif has_default:
                kwargs["nargs"] = "?"
                kwargs["default"] = default
            kwargs["type"] = tp
            parser.add_argument(f.name, **kwargs)
            continue
        names = [meta.get("flag") or "--" + f.name.replace("_", "-"), *meta.get("aliases", ())]
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = bool(default)
        else:
            kwargs["type"] = tp
            kwargs["required"] = not has_default
            if has_default:
                kwargs["default"] = default
            if is_seq:
                kwargs["nargs"] = "+"
                kwargs["action"] = "extend"
                kwargs["default"] = None
        parser.add_argument(*names, **kwargs)


def config_from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    """Builds the frozen config from parsed arguments (sequence fields become tuples)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or not hasattr(ns, f.name):
            continue
        v = getattr(ns, f.name)
        _, is_seq = _base_type(hints[f.name])
        if is_seq:
            if v is None:
                continue  # keep the dataclass default
            v = tuple(v)
        values[f.name] = v
    return cls(**values)


def parse_config(cls: type[T], argv: list[str] | None, prog: str, description: str) -> T:
    """Parses `argv` into `cls`; argparse exits with a usage message on bad flags."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_arguments(parser, cls)
    ns = parser.parse_args(argv)
    try:
        return config_from_namespace(cls, ns)
    except ValueError as exc:  # a __post_init__ check names the field
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
