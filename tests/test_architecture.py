"""The package's import graph, read from the source (no module is imported): no cycle, and the arrows hold.

Every `import` counts, the ones inside functions too: a lazy import still makes the dependency
(only imports under `if TYPE_CHECKING:` do not: they never run).
A `from package import name` counts as an edge to `package.name` when that is a module, else to `package`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bigmodel"

# The torch-free core: an application that only loads bundles gets these and nothing heavier.
CORE = ("bigmodel.runtime", "bigmodel.manifest", "bigmodel.errors", "bigmodel.fileio", "bigmodel.priors",
        "bigmodel.checksum")
CORE_MAY_NOT_IMPORT = ("torch", "bigmodel.models", "bigmodel.training", "bigmodel.export", "bigmodel.parity",
                       "bigmodel.bench", "bigmodel.eval", "bigmodel.data", "bigmodel.cli", "bigmodel.quickstart")
# Deployment code reads checkpoints through models/, never through the training loop.
DEPLOY = ("bigmodel.export", "bigmodel.parity", "bigmodel.bench")



def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """Every absolute module name `path` imports (bigmodel's resolved to a module of the package)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = {f"{mod}.{a.name}" for a in node.names} & known
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(mod)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (third-party names kept too, for the arrow checks)."""
    mods = modules()
    return {name: imports(path, set(mods)) for name, path in mods.items()}


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted; a self-import counts."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v] & g.keys()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in g[v]:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out)


def test_cycle_finder_finds_a_cycle_and_passes_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_import_parser_resolves_relative_and_package_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "bigmodel" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "bigmodel" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from . import a\nfrom bigmodel.sub.a import f\n")
    (pkg / "a.py").write_text("import torch\nif TYPE_CHECKING:\n    import numpy\n"
                              "def g():\n    from bigmodel.sub import VALUE\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "bigmodel")
    g = graph()
    assert g["bigmodel.sub"] == {"bigmodel.sub.a"}
    assert g["bigmodel.sub.a"] == {"torch", "bigmodel.sub"}
    assert cycles(g) == [["bigmodel.sub", "bigmodel.sub.a"]]


def test_no_import_cycle_between_modules():
    assert cycles(graph()) == []


def test_runtime_manifest_errors_import_nothing_heavier():
    bad = {(m, d) for m, deps in graph().items() if under(m, CORE) for d in deps if under(d, CORE_MAY_NOT_IMPORT)}
    assert bad == set(), f"the torch-free core imports upward: {sorted(bad)}"


def test_export_parity_bench_do_not_import_training():
    bad = {(m, d) for m, deps in graph().items() if under(m, DEPLOY) for d in deps if under(d, ("bigmodel.training",))}
    assert bad == set(), f"deployment code imports the training package: {sorted(bad)}"


def test_progress_events_are_a_torch_free_leaf():
    """Every layer reports through bigmodel.progress, so it may import none of them (nor torch)."""
    assert {d for d in graph()["bigmodel.progress"] if d == "torch" or d.startswith("bigmodel")} == set()
