"""The import graph: light entry points, no upward imports, no cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gradsight

SRC = Path(gradsight.__file__).resolve().parent

#: Lower layers never import higher ones (a module may import its own layer and below).
LAYERS = {
    "_errors": 0, "_files": 0, "_version": 0, "_text": 0, "display": 0, "schedules": 0, "stats": 0,
    "store": 1, "data": 1, "models": 1,
    "instrument": 2,
    "probes": 3, "diagnosis": 3, "integrations": 3, "compgraph": 3,
    "plots": 4,
    "train": 5, "report": 5,
    "cli": 6,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """gradsight modules imported by a module, anywhere in it: deferred imports and imports for
    type checkers only (``if TYPE_CHECKING:``) count too, since a type a module names is a
    dependency of its design even when it is not loaded at run time."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("gradsight")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("gradsight"):
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in known else mod)
    return out - {name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_imports_for_type_checkers_count(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from gradsight.store.reader import Run\n"
                    "def f():\n    import gradsight.plots\n")
    known = {"gradsight.store.reader", "gradsight.plots"}
    assert _imports("gradsight.probes.mod", path, known) == {"gradsight.store.reader", "gradsight.plots"}


def test_nothing_imports_the_package_root():
    offenders = sorted(m for m, deps in _graph().items() if "gradsight" in deps and m != "gradsight")
    assert offenders == [], f"modules importing the package root: {offenders}"


def test_no_module_imports_a_higher_layer():
    bad = []
    for mod, deps in _graph().items():
        if mod == "gradsight":  # the package root: the public names of every layer, loaded on first use
            continue
        for dep in deps:
            a, b = _top(mod), _top(dep)
            assert a in LAYERS and (b in LAYERS or dep == "gradsight"), f"unlisted package in {mod} -> {dep}"
            if dep != "gradsight" and LAYERS[b] > LAYERS[a]:
                bad.append(f"{mod} -> {dep}")
    assert bad == [], "upward imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycles_between_modules():
    graph = _graph()
    # a package's __init__ re-exporting its modules is not a cycle of its own
    edges = {m: {d for d in deps if not (graph.get(d) is not None and m.startswith(d + "."))}
             for m, deps in graph.items()}
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def _fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_gradsight_loads_neither_torch_nor_matplotlib():
    assert _fresh("import sys, gradsight; print(sorted({'torch', 'matplotlib', 'pandas'} & set(sys.modules)))") == "[]"


def test_the_graph_and_the_display_vocabulary_do_not_load_matplotlib():
    code = ("import sys, gradsight.display; low = sorted({'numpy', 'matplotlib'} & set(sys.modules))\n"
            "import gradsight.compgraph; print(low, 'matplotlib' in sys.modules)")
    assert _fresh(code) == "[] False"


def test_watch_does_not_load_matplotlib():
    code = "import sys, gradsight as gs; gs.watch; print('matplotlib' in sys.modules)"
    assert _fresh(code) == "False"


def test_cli_help_does_not_import_torch():
    code = ("import sys, contextlib, io\n"
            "from gradsight.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out: main(['--help'])\n"
            "assert 'compare' in out.getvalue() and 'doctor' in out.getvalue()\n"
            "print(sorted({'torch', 'matplotlib'} & set(sys.modules)))")
    assert _fresh(code) == "[]"


@pytest.mark.parametrize("name", sorted(set(gradsight.__all__)))
def test_every_public_name_resolves(name):
    assert getattr(gradsight, name) is not None


def test_public_functions_are_not_shadowed_by_subpackages():
    import gradsight.compgraph.trace  # noqa: F401  (importing subpackages must not replace the functions)
    import gradsight.diagnosis.rules  # noqa: F401
    import gradsight.probes  # noqa: F401

    assert callable(gradsight.graph) and callable(gradsight.diagnose) and callable(gradsight.shattering)
    assert not isinstance(gradsight.graph, type(gradsight))
