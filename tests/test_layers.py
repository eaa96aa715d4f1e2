"""The package's layers (docs/architecture.md), read from the source with ``ast``: nothing is imported.

Each top-level entry of ``voxprompt`` sits on a layer and imports only its own layer or lower ones;
no two modules import each other, directly or through others. Function-local (lazy) imports count
like any other. Imports under ``if TYPE_CHECKING:`` are not run and do not count, except in a package
``__init__``, where they name the module behind each lazily loaded attribute (``from ..session import
Session`` is an import of ``voxprompt.session.volume``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "voxprompt"

# Lowest first. Entries of one layer may import each other (but not in a cycle).
LAYERS: list[set[str]] = [
    {"errors", "version", "_lazy", "masks", "runtime"},  # foundations: no voxprompt imports besides these
    {"io"},
    {"preprocess"},
    {"models"},
    {"refine", "cleanup"},  # algorithms on a prediction: boundary refinement, clean-up
    {"session"},
    {"viz"},  # pictures of results, for eval, train and the command lines
    {"data", "eval", "train"},
    {"server"},
    {"cli", "__main__", "napari"},  # user interfaces: the command line, the napari plugin
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
PACKAGES = {name for name, p in MODULES.items() if p.name == "__init__.py"}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, type_checking: bool) -> list[ast.stmt]:
    """Import statements, everywhere (functions too); those under ``if TYPE_CHECKING:`` only if asked."""
    out: list[ast.stmt] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and (type_checking or not guarded):
                out.append(child)
            visit(child, guarded or (isinstance(child, ast.If) and _is_type_checking(child)))

    visit(tree, False)
    return out


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if module in PACKAGES else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _lazy_table(package: str) -> dict[str, str]:
    """Attribute -> defining module of a package ``__init__``, from its TYPE_CHECKING imports."""
    tree = ast.parse(MODULES[package].read_text())
    table: dict[str, str] = {}
    for node in _imports(tree, type_checking=True):
        if isinstance(node, ast.ImportFrom):
            target = _absolute(package, node)
            for alias in node.names:
                table[alias.asname or alias.name] = target
    return table


def _targets(module: str) -> set[str]:
    """The voxprompt modules ``module`` imports (each name resolved to the module that defines it)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in _imports(tree, type_checking=module in PACKAGES):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "voxprompt")
            continue
        target = _absolute(module, node)
        if target.split(".")[0] != "voxprompt":
            continue
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if sub in MODULES:
                found.add(sub)
            elif target in PACKAGES and target != module and alias.name in _lazy_table(target):
                found.add(_lazy_table(target)[alias.name])
            else:
                found.add(target)
    return {t for t in found if t != module}


GRAPH = {m: _targets(m) for m in MODULES}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_top_level_entry_has_a_layer():
    tops = {_top(m) for m in MODULES} - {None}
    assert not tops - set(LAYER_OF), f"add these to LAYERS (and docs/architecture.md): {sorted(tops - set(LAYER_OF))}"


def test_no_upward_imports():
    bad = []
    for module, targets in GRAPH.items():
        src = _top(module)
        if src is None:
            continue  # the package's own __init__: the public facade, lazy
        for target in targets:
            dst = _top(target)
            if dst is None:
                bad.append(f"{module} imports the voxprompt facade (import the module that defines the name)")
            elif LAYER_OF[dst] > LAYER_OF[src]:
                bad.append(f"{module} ({src}, layer {LAYER_OF[src]}) imports {target} ({dst}, layer {LAYER_OF[dst]})")
    assert not bad, "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_the_checker_sees_cycles_and_lazy_names():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "voxprompt.session.volume" in GRAPH["voxprompt.server.model_host"]  # through session's lazy table


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_layers_name_real_entries(layer):
    tops = {_top(m) for m in MODULES}
    assert LAYERS[layer] <= tops, f"LAYERS[{layer}] names missing entries: {sorted(LAYERS[layer] - tops)}"
