"""The wire vocabulary has one home: no module of the package spells a key of `gauntlet/keys.py` again.

An AST scan of `gauntlet/**/*.py` finds every string constant (docstrings aside) equal to one of the
keys' values, or naming a camera's image column (`observation.images.<camera>`, which is
`keys.image_feature(camera)`); outside keys.py each must be a listed exception, one that belongs to
another protocol and only shares the spelling.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gauntlet
from gauntlet import keys

PACKAGE = Path(gauntlet.__file__).resolve().parent
KEYS_FILE = "keys.py"

# Values of keys.py that are also ordinary words of other contracts and are not scanned.
NOT_SCANNED: dict[str, str] = {
    keys.TASK_KEY: "also the scene table's and the results' column name, a contract of its own",
}

# (module path relative to gauntlet/, value) -> why the literal stays.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("data/import_hdf5.py", keys.ACTIONS_KEY): "robomimic's HDF5 layout (data/demo_N/actions), a foreign file format",
    ("data/dataset_writer.py", keys.ACTIONS_KEY): "names the writer's own `actions` argument in an error message",
    ("runtime/config_args.py", keys.ACTION_FEATURE): "argparse's add_argument(action=...) keyword",
    ("policies/lerobot/config.py", keys.ACTION_FEATURE): "the word in an error message (\"the environment's action (7,)\")",
}


def wire_values() -> set[str]:
    """Every module-level string constant of keys.py, less the values not scanned."""
    values = {v for name, v in vars(keys).items() if name.isupper() and isinstance(v, str)}
    return values - set(NOT_SCANNED)


def docstring_nodes(tree: ast.Module) -> set[int]:
    """ids of the Constant nodes that are module, class or function docstrings."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                found.add(id(body[0].value))
    return found


def is_wire_literal(text: str, values: set[str]) -> bool:
    """A wire value itself, or an image column spelled out instead of built by `keys.image_feature`."""
    return text in values or text.startswith(keys.IMAGE_FEATURE_PREFIX)


def literal_hits() -> set[tuple[str, str, int]]:
    """(module, value, line) of every non-docstring string constant that is a wire literal."""
    values = wire_values()
    hits: set[tuple[str, str, int]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == KEYS_FILE:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        docs = docstring_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and is_wire_literal(node.value, values) \
                    and id(node) not in docs:
                hits.add((rel, node.value, node.lineno))
    return hits


def test_scan_sees_the_vocabulary() -> None:
    """The scan's vocabulary is keys.py's: the wire keys and their dataset columns are in it."""
    values = wire_values()
    for key in (keys.STATE_KEY, keys.IMAGE_KEY, keys.WRIST_IMAGE_KEY, keys.PROMPT_KEY, keys.EPISODE_ID_KEY,
                keys.ACTIONS_KEY, keys.SERVER_TIMING_KEY, keys.STATE_FEATURE, keys.ACTION_FEATURE,
                keys.IMAGE_FEATURE_PREFIX):
        assert key in values
    assert is_wire_literal("observation.images.front", values)  # any camera's column, known or not
    assert not is_wire_literal("observation.imagery", values)


def test_scan_finds_a_literal_and_skips_docstrings(tmp_path: Path) -> None:
    """The scanner flags a respelled key in code and ignores the same text in a docstring."""
    tree = ast.parse(f'"""Mentions {keys.ACTIONS_KEY!r}."""\n\ndef f(out):\n    """{keys.ACTIONS_KEY}"""\n'
                     f'    return out[{keys.ACTIONS_KEY!r}]\n')
    docs = docstring_nodes(tree)
    flagged = [n.lineno for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and n.value == keys.ACTIONS_KEY and id(n) not in docs]
    assert flagged == [5]


def test_no_wire_key_literal_outside_keys() -> None:
    """Every module imports its wire keys from keys.py; only the listed foreign spellings remain."""
    stray = sorted(h for h in literal_hits() if (h[0], h[1]) not in EXCEPTIONS)
    assert not stray, "wire keys spelled outside gauntlet/keys.py (import them from there):\n" + \
        "\n".join(f"  gauntlet/{rel}:{line}: {value!r}" for rel, value, line in stray)


def test_every_exception_is_still_needed() -> None:
    """An exception whose literal is gone is removed from the list, so the list stays the truth."""
    used = {(rel, value) for rel, value, _ in literal_hits()}
    assert not set(EXCEPTIONS) - used, f"stale exceptions: {sorted(set(EXCEPTIONS) - used)}"
