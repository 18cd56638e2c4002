"""Frozen-dataclass configs <-> argparse.

Every entry point has one frozen dataclass config. Each field is declared with `option(...)`, whose
help text becomes the flag's `--help`, so the config is the single place a knob is documented.

List fields (`tuple[...]`) take every spelling a user tries: `--tasks a,b`, `--tasks a b` and
`--tasks a --tasks b` all give `("a", "b")`. A field whose items contain commas themselves (e.g.
`--knobs actors=1,2`) opts out with `split_commas=False`.

`require_at_least` is the range check configs' `__post_init__` share; `run_command` is the exit path
entry points share (an expected error printed as `PROG: message`, with its exit status).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def option(
    default: Any = dataclasses.MISSING,
    help: str | Callable[[], str] = "",
    *,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    positional: bool = False,
    choices: tuple[Any, ...] | None = None,
    default_factory: Any = dataclasses.MISSING,
    split_commas: bool = True,
    required: bool = False,
) -> Any:
    """A dataclass field that documents itself on the command line.

    `help` may be a function, called when `--help` is built (text derived from a registry that
    plugins extend); `flag` overrides the derived `--field-name`; `aliases` keep old spellings working;
    `positional` makes it a positional argument; `split_commas=False` keeps commas inside list items;
    `required` makes the command line ask for a field whose dataclass default exists only because it
    follows fields with defaults (its `__post_init__` refuses the default).
    """
    meta = {"help": help, "flag": flag, "aliases": aliases, "positional": positional, "choices": choices,
            "split_commas": split_commas, "required": required}
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
        has_default = not meta.get("required") and (f.default is not dataclasses.MISSING
                                                    or f.default_factory is not dataclasses.MISSING)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        help_text = meta.get("help", "")
        help_text = help_text() if callable(help_text) else help_text
        if is_seq:
            help_text = f"{help_text} [list: {'a,b or ' if meta.get('split_commas', True) else ''}a b]"
            if meta.get("choices"):
                help_text = f"{help_text} {{{','.join(map(str, meta['choices']))}}}"
        if not has_default and not meta.get("positional"):
            help_text = f"{help_text} (required)"
        elif has_default and default not in (None, False, "", (), []) and "default:" not in help_text:
            shown = ",".join(map(str, default)) if is_seq else default
            help_text = f"{help_text} (default: {shown})"
        kwargs: dict[str, Any] = {"help": help_text, "dest": f.name}
        if meta.get("choices") and not is_seq:  # list items are checked after commas are split
            kwargs["choices"] = meta["choices"]
        if meta.get("positional"):
            kwargs.pop("dest")
            if is_seq:
                kwargs["nargs"] = "+" if not has_default else "*"
            elif has_default:
                kwargs["nargs"] = "?"
                kwargs["default"] = default
            kwargs["type"] = str if is_seq else tp
            parser.add_argument(f.name, **kwargs)
            continue
        names = [flag_of(f), *meta.get("aliases", ())]
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = bool(default)
        else:
            kwargs["type"] = str if is_seq else tp  # list items are converted after commas are split
            kwargs["required"] = not has_default
            if has_default:
                kwargs["default"] = default
            if is_seq:
                kwargs["nargs"] = "+"
                kwargs["action"] = "extend"
                kwargs["default"] = None
        parser.add_argument(*names, **kwargs)


def _list_items(field: dataclasses.Field, item_type: Any, texts: list[Any]) -> tuple[Any, ...]:
    """`["a,b", "c"]` -> `("a", "b", "c")`, each converted and checked against the field's choices."""
    meta = field.metadata or {}
    flag = flag_of(field)
    parts = [p for t in texts for p in (str(t).split(",") if meta.get("split_commas", True) else [str(t)])]
    items = []
    for text in (p.strip() for p in parts):
        if not text:
            continue
        try:
            item = item_type(text)
        except ValueError:
            raise ValueError(f"{flag}: {text!r} is not a valid {getattr(item_type, '__name__', item_type)}") from None
        if meta.get("choices") and item not in meta["choices"]:
            raise ValueError(f"{flag}: {text!r} is not one of {', '.join(map(str, meta['choices']))}")
        items.append(item)
    return tuple(items)


def config_from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    """Builds the frozen config from parsed arguments (list fields become tuples)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or not hasattr(ns, f.name):
            continue
        v = getattr(ns, f.name)
        item_type, is_seq = _base_type(hints[f.name])
        if is_seq:
            if v is None:
                continue  # keep the dataclass default
            v = _list_items(f, item_type, list(v))
        values[f.name] = v
    return cls(**values)


def parse_config(cls: type[T], argv: list[str] | None, prog: str, description: str) -> T:
    """Parses `argv` into `cls`; argparse exits with a usage message on bad flags."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_arguments(parser, cls)
    ns = parser.parse_args(argv)
    try:
        return config_from_namespace(cls, ns)
    except ValueError as exc:  # a __post_init__ check names the field: the user typed its flag
        parser.error(name_the_flag(cls, str(exc)))
        raise  # unreachable: parser.error exits


def flag_of(field: dataclasses.Field) -> str:
    """The command-line flag of a config field: its `flag`, else `--field-name`."""
    return (field.metadata or {}).get("flag") or "--" + field.name.replace("_", "-")


def name_the_flag(cls: type, message: str) -> str:
    """A config's error message that starts with a field's name (`trials must be >= 1`, `from_scenes: ...`)
    with that name replaced by the field's flag, as the user wrote it on the command line."""
    for f in sorted(dataclasses.fields(cls), key=lambda f: -len(f.name)):
        if (f.metadata or {}).get("positional") or not message.startswith(f.name):
            continue
        if message[len(f.name): len(f.name) + 1] in (":", " ", "="):
            return flag_of(f) + message[len(f.name):]
    return message


def as_tuple(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A list field given in code as `"a,b"`, `("a", "b")` or `("a,b",)` -> `("a", "b")`.

    Configs call it in `__post_init__` so that programmatic callers get the same spellings as the CLI.
    """
    texts = [value] if isinstance(value, str) else list(value)
    return tuple(p.strip() for t in texts for p in str(t).split(",") if p.strip())


def require_at_least(config: Any, minimum: float, *names: str, error: Callable[[str], Exception] = ValueError,
                     as_flags: bool = False) -> None:
    """For a config's `__post_init__`: raises `error("NAME must be >= MINIMUM, got VALUE")` for the first
    field in `names` below `minimum`, so the message names the field the user must change; with
    `as_flags`, it names the flag instead: `--flag-name: must be >= MINIMUM, got VALUE`."""
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            where = f"--{name.replace('_', '-')}:" if as_flags else name
            raise error(f"{where} must be >= {minimum}, got {value}")


def run_command(prog: str, work: Callable[[], int | None], errors: Mapping[type[Exception], int]) -> int:
    """An entry point's exit status: `work()`'s (None = 0), or for an expected error its status.

    `errors` maps each expected exception type to the status it exits with (by convention 2 for a
    bad configuration or input, 1 for work that failed); its message, which names the problem and
    what to do, is printed as `PROG: message` on stderr. Anything else is a bug and keeps its traceback.
    """
    try:
        status = work()
    except tuple(errors) as exc:
        print(f"{prog}: {exc}", file=sys.stderr, flush=True)
        return next(code for kind, code in errors.items() if isinstance(exc, kind))
    return 0 if status is None else int(status)
