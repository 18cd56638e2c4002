"""The fusion benchmark and the robot side do not import each other (static: read from the source, AST).

Every import counts wherever it stands (module level, inside a function, under TYPE_CHECKING), and
so does a string naming a module the way lazy registries and the CLI table do ("gauntlet.x.y" or
"gauntlet.x.y:attr"). Rules:
- no module outside `gauntlet.fusion` refers to it, except the CLI dispatcher naming its subcommand's
  module as a string (imported only when that command runs);
- everything `gauntlet.fusion` reaches, transitively, is itself, `gauntlet.runtime` or the generic
  sweep skeleton (and the packages holding them, whose `__init__` runs on import). One module of the
  serving layer is reached through `gauntlet.runtime.ray_session` and not followed further: the
  setup hook every Ray worker of every entry point runs (loopback gRPC, the message limit).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import gauntlet

PACKAGE_ROOT = Path(gauntlet.__file__).resolve().parent
FUSION = "gauntlet.fusion"
CLI = "gauntlet.platform.cli"
# the generic sweep skeleton the fusion sweep is built on (robot-free, checked below like the rest)
SKELETON = ("gauntlet.platform.sweeps.job", "gauntlet.platform.sweeps.tune_progress")
ALLOWED_FOR_FUSION = (FUSION, "gauntlet.runtime", *SKELETON)
# reached through gauntlet.runtime.ray_session.worker_runtime_env: the Ray worker setup hook (named as a
# string and run inside Ray's workers, whatever their job); reached, not followed
WORKER_HOOKS = ("gauntlet.deployments.grpc_bind",)
_MODULE_STRING = re.compile(r"^gauntlet(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?$")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def references(source: str, module: str, is_package: bool) -> tuple[set[str], set[str]]:
    """(modules imported by an import statement, modules named in a string) of one module's source."""
    package = module if is_package else module.rpartition(".")[0]
    imported: set[str] = set()
    named: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            imported.add(base)
            imported.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.match(node.value):
            named.add(node.value.partition(":")[0])
    return imported, named


def package_modules() -> dict[str, tuple[set[str], set[str]]]:
    """Every module of the package -> (imported, named) references to `gauntlet.*` modules."""
    graph = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        name = module_name(path)
        imported, named = references(path.read_text(), name, path.name == "__init__.py")
        graph[name] = ({m for m in imported if _is_ours(m)}, {m for m in named if _is_ours(m)})
    return graph


def _is_ours(module: str) -> bool:
    return module == "gauntlet" or module.startswith("gauntlet.")


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _existing(module: str, graph: dict) -> str | None:
    """`module` if it is a module of the package, else its longest existing prefix (an imported name)."""
    while module and module not in graph:
        module = module.rpartition(".")[0]
    return module or None


def _with_parents(module: str) -> list[str]:
    """Importing a.b.c runs a/__init__, a/b/__init__ and then a/b/c."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def robot_side_users_of_fusion(graph: dict[str, tuple[set[str], set[str]]]) -> list[str]:
    """'module -> reference' for each module outside gauntlet.fusion that refers to it (the CLI may
    name it as a string only)."""
    found = []
    for module, (imported, named) in graph.items():
        if _within(module, (FUSION,)):
            continue
        refs = imported if module == CLI else imported | named
        found += [f"{module} -> {ref}" for ref in sorted(refs) if _within(ref, (FUSION,))]
    return found


def fusion_reach_outside(graph: dict[str, tuple[set[str], set[str]]]) -> list[str]:
    """'module -> reference' for each module fusion reaches (transitively) that is not fusion, runtime,
    the skeleton, the worker hook or a package holding them."""
    allowed_packages = {p for prefix in (*ALLOWED_FOR_FUSION, *WORKER_HOOKS) for p in _with_parents(prefix)}
    todo = [m for m in graph if _within(m, (FUSION,))]
    seen = set(todo)
    found = []
    while todo:
        module = todo.pop()
        imported, named = graph[module]
        for ref in sorted(imported | named):
            target = _existing(ref, graph)
            for reached in _with_parents(target) if target else []:
                direct_hook = reached in WORKER_HOOKS and _within(module, (FUSION,))  # only via runtime
                if direct_hook or not (_within(reached, ALLOWED_FOR_FUSION) or reached in allowed_packages):
                    found.append(f"{module} -> {reached}")
                elif reached not in seen and reached not in WORKER_HOOKS:
                    seen.add(reached)
                    todo.append(reached)
    return sorted(set(found))


def test_the_robot_side_imports_nothing_of_fusion() -> None:
    assert robot_side_users_of_fusion(package_modules()) == []


def test_fusion_reaches_only_itself_runtime_and_the_sweep_skeleton() -> None:
    assert fusion_reach_outside(package_modules()) == []


def test_the_walker_sees_every_kind_of_reference() -> None:
    """The graph the rules read holds the edges known to exist (so an empty finding means something)."""
    graph = package_modules()
    assert "gauntlet.platform.sweeps.job" in graph["gauntlet.fusion.sweep"][0]  # module level
    assert "gauntlet.fusion.clustering" in graph["gauntlet.fusion.trial"][0]  # inside a function
    assert "gauntlet.fusion.sweep" in graph[CLI][1]  # the CLI's lazy table
    assert "gauntlet.fusion.methods.qformer" in graph["gauntlet.fusion.methods"][1]  # registry entries
    assert "gauntlet.platform.eval.driver" in graph["gauntlet.platform.sweeps.throughput"][0]  # robot side
    assert "gauntlet.deployments.grpc_bind" in graph["gauntlet.runtime.ray_session"][0]  # the worker hook


def test_the_rules_catch_a_hidden_robot_import_and_a_robot_user_of_fusion() -> None:
    graph = package_modules()
    lazy_robot_import = "def f():\n    from gauntlet.envs import scene_db\n    return scene_db\n"
    graph["gauntlet.fusion.extra"] = tuple(
        {m for m in refs if _is_ours(m)} for refs in references(lazy_robot_import, "gauntlet.fusion.extra", False))
    assert fusion_reach_outside(graph) == ["gauntlet.fusion.extra -> gauntlet.envs",
                                           "gauntlet.fusion.extra -> gauntlet.envs.scene_db"]
    graph["gauntlet.fusion.extra"] = ({"gauntlet.deployments.grpc_bind"}, set())
    assert fusion_reach_outside(graph) == ["gauntlet.fusion.extra -> gauntlet.deployments.grpc_bind"]
    # the skeleton is checked too: a robot import there would reach fusion through it
    imported, named = graph["gauntlet.platform.sweeps.job"]
    graph["gauntlet.platform.sweeps.job"] = (imported | {"gauntlet.keys"}, named)
    assert "gauntlet.platform.sweeps.job -> gauntlet.keys" in fusion_reach_outside(graph)

    typed_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..fusion.trial import TrialSpec\n"
    graph["gauntlet.envs.extra"] = tuple(
        {m for m in refs if _is_ours(m)} for refs in references(typed_only, "gauntlet.envs.extra", False))
    assert "gauntlet.envs.extra -> gauntlet.fusion.trial" in robot_side_users_of_fusion(graph)
