"""The source tree's structure: no private name imported across modules, no import cycle, and every module
importable on its own (in any order, as a user's first import)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted((SRC / "pointpeft").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def _is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _runtime_imports(tree: ast.Module, modules: dict[str, ast.Module]) -> set[str]:
    """The pointpeft modules ``tree`` imports when it runs, at module level or inside a function
    (TYPE_CHECKING blocks left out); ``from package import submodule`` counts as importing the submodule."""
    deps: set[str] = set()
    checking = [n for n in tree.body if _is_type_checking(n)]
    skipped = {id(n) for block in checking for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name.split(".")[0] == "pointpeft")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pointpeft":
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            deps.update(subs if len(subs) == len(node.names) else [node.module, *subs])
    return deps


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pointpeft":
                offenders += [
                    f"{name}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert offenders == []


def test_no_import_cycle_between_modules():
    modules = _modules()
    # A package's __init__ re-exports its submodules; a submodule importing a sibling through the package is
    # not a cycle in what runs first, so packages are left out of the graph.
    packages = {n for n in modules if (SRC / n.replace(".", "/") / "__init__.py").exists()}
    graph = {
        name: {d for d in _runtime_imports(tree, modules) if d not in packages}
        for name, tree in modules.items()
        if name not in packages
    }
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_imports_first():
    """Each module, imported first in a fresh set of pointpeft modules, imports (a cycle through a
    package's ``__init__`` shows up as an ImportError only in some orders)."""
    names = sorted(n for n in _modules() if n != "pointpeft.__main__")
    script = (
        "import sys, importlib, torch\n"
        f"names = {names!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m == 'pointpeft' or m.startswith('pointpeft.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as error:\n"
        "        failed.append(f'{name}: {error}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
