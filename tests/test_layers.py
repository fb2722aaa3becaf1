"""The one-way arrows between kvchat's layers, read from the source's imports.

Nothing here imports the modules it checks: it parses them, so a rule that breaks is
reported as the file and line of the import, whatever that import would do.
See docs/architecture.md for the picture these rules keep true.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "bench", "tui")

CONTRACT = ("api", "events", "errors", "config", "session", "store")
"""The modules at engine/'s top; everything else in engine/ lives in a wing."""

WINGS = ("model", "decode", "batch", "backends", "routing", "structured", "history", "cache",
         "serve", "quant", "files")

BASE = {"engine.errors", "engine.config", "engine.events", "engine.files"}
"""The contract's vocabulary, and how files are written: every layer above may use it."""

ALLOWED: dict[str, set[str]] = {
    "engine.errors": set(),
    "engine.config": {"engine.errors"},
    "engine.events": {"engine.errors"},
    # Atomic, private files: the store, the state cache, the app's preferences, exports.
    "engine.files": {"engine.errors"},
    # The output spec travels in a request: the interface may name it.
    "engine.structured": BASE,
    "engine.api": BASE | {"engine.structured"},
    "engine.model": BASE | {"engine.api"},
    # Saved KV states: read from and written into a loaded model's context.
    "engine.cache": BASE | {"engine.model"},
    "engine.decode": BASE | {"engine.api", "engine.model", "engine.structured",
                             "engine.cache"},
    # Many replies in one context: the decode wing's sampling and window arithmetic,
    # and the state cache its idle sequences are saved to.
    "engine.batch": BASE | {"engine.api", "engine.model", "engine.decode",
                            "engine.structured", "engine.cache"},
    "engine.routing": BASE | {"engine.api", "engine.model", "engine.structured"},
    "engine.backends": BASE | {"engine.api", "engine.model", "engine.decode", "engine.batch",
                               "engine.routing", "engine.structured", "engine.cache"},
    # Quantizing and measuring a quant's cost: model files, headers and shapes.
    "engine.quant": BASE | {"engine.model"},
    # The server shares one engine among its clients: the engine a backend makes.
    "engine.serve": BASE | {"engine.api", "engine.backends"},
    # The store's mixins and their tables: the message tree and the search index.
    "engine.history": BASE,
    # The conversation layer: the store keeps the attempt log's rows, the message tree
    # and the index; the session routes, checks and retries a turn over any engine.
    "engine.store": BASE | {"engine.structured", "engine.history"},
    "engine.session": BASE | {"engine.api", "engine.routing", "engine.structured",
                              "engine.store"},
    "bench": {"engine.*", "bench"},
    "tui.cli": {"engine.*", "bench", "tui", "tui.cli"},
    "tui": {f"engine.{name}" for name in CONTRACT} | {"engine.files", "tui"},
}
"""What each layer may import, besides itself. ``engine.*`` is any part of the engine.
The app (``tui`` outside its CLI) sees the engine's contract only, and writes its files
through ``engine.files``; the CLI also plans, synthesizes, benchmarks and builds engines
(``engine.backends.factory``)."""

FORBIDDEN_THIRD_PARTY: dict[str, tuple[str, ...]] = {
    "engine": ("textual", "tui", "bench"),
    "bench": ("textual", "tui"),
    "tui": ("llama_cpp",),
}


@dataclass(frozen=True)
class Import:
    source: str
    """The importing module, dotted."""
    target: str
    """The imported module, dotted (``from a.b import c`` gives ``a.b.c`` when c is a
    module, else ``a.b``)."""
    line: int
    top_level: bool
    """Run when the module is imported (not inside a function, nor for type checkers
    only)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: set[str]) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deferred: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or (
                isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
            deferred.update(id(n) for n in ast.walk(node) if n is not node)
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.append(full if full in modules else base)
        found += [Import(name, t, node.lineno, id(node) not in deferred)
                  for t in targets]
    return found


def layer(module: str) -> str:
    """The layer a module belongs to: a contract module, a wing, bench, tui.cli or tui."""
    parts = module.split(".")
    if parts[0] == "engine" and len(parts) > 1:
        return f"engine.{parts[1]}"
    if parts[0] == "tui" and len(parts) > 1 and parts[1] == "cli":
        return "tui.cli"
    return parts[0]


def allowed(source_layer: str, target_layer: str) -> bool:
    rules = ALLOWED[source_layer]
    return (target_layer == source_layer or target_layer in rules
            or ("engine.*" in rules and target_layer.startswith("engine")))


ALL = sources()
IMPORTS = [imp for name, path in ALL.items() for imp in imports_of(name, path, set(ALL))]


def test_engine_top_holds_the_contract_and_the_wings_only() -> None:
    top = {p.stem for p in (ROOT / "engine").glob("*.py")} - {"__init__"}
    dirs = {p.name for p in (ROOT / "engine").iterdir()
            if p.is_dir() and (p / "__init__.py").exists()}
    # A contract module may grow into a package of its own (events), never a wing.
    assert top | (dirs & set(CONTRACT)) == set(CONTRACT) and not top & dirs
    assert dirs - set(CONTRACT) == set(WINGS)


@pytest.mark.parametrize("package", [f"engine/{w}" for w in WINGS] + ["bench"])
def test_every_wing_says_what_it_owns_and_may_import(package: str) -> None:
    for init in (ROOT / package).rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc.split()) >= 20, f"{init.relative_to(ROOT)}: no docstring saying what it owns"
        assert "import" in doc, f"{init.relative_to(ROOT)}: its docstring says nothing of imports"


def test_imports_only_go_down_the_layers() -> None:
    wrong = [f"{ALL[i.source].relative_to(ROOT)}:{i.line}: {layer(i.source)} imports {i.target}"
             for i in IMPORTS
             if layer(i.target) in ALLOWED and not allowed(layer(i.source), layer(i.target))]
    assert wrong == []


def test_no_layer_imports_what_it_must_not_know() -> None:
    wrong = [f"{ALL[i.source].relative_to(ROOT)}:{i.line}: imports {i.target}"
             for i in IMPORTS
             for banned in FORBIDDEN_THIRD_PARTY[i.source.split(".")[0]]
             if i.target == banned or i.target.startswith(banned + ".")]
    assert wrong == []


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {name: set() for name in ALL}
    for i in IMPORTS:
        if i.top_level and i.target in ALL and i.target != i.source:
            graph[i.source].add(i.target)
    cycles = [sorted(c) for c in strongly_connected(graph) if len(c) > 1]
    assert cycles == []


def test_no_cycles_between_layers() -> None:
    """Counting imports inside functions too: a lazy import is still an arrow."""
    graph: dict[str, set[str]] = {}
    for i in IMPORTS:
        if i.target.split(".")[0] in PACKAGES and layer(i.source) != layer(i.target):
            graph.setdefault(layer(i.source), set()).add(layer(i.target))
            graph.setdefault(layer(i.target), set())
    cycles = [sorted(c) for c in strongly_connected(graph) if len(c) > 1]
    assert cycles == []


def test_the_checker_sees_a_wrong_arrow() -> None:
    """The rules are not vacuous: an import from a wing up into the session breaks them,
    and a cycle is found as one."""
    assert not allowed("engine.decode", "engine.session")
    assert not allowed("tui", "engine.decode")
    assert allowed("tui.cli", "engine.model")
    assert [sorted(c) for c in strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}})
            if len(c) > 1] == [["a", "b"]]


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the module graph is deep enough to matter)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                found.append(component)
    return found


MODULE_LINES = 420
FUNCTION_LINES = 60


def test_modules_and_functions_stay_a_readable_size() -> None:
    """Files under ~400 lines, functions of a screenful: the house's size rules."""
    long_modules = [f"{path.relative_to(ROOT)}: {n} lines" for path in ALL.values()
                    if (n := len(path.read_text().splitlines())) > MODULE_LINES]
    long_functions = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines"
        for path in ALL.values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := (node.end_lineno or node.lineno) - node.lineno + 1) > FUNCTION_LINES]
    assert long_modules == []
    assert long_functions == []


def test_one_class_per_name() -> None:
    """A class name says which class it is, wherever it is imported from."""
    homes: dict[str, list[str]] = {}
    for name, path in ALL.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                homes.setdefault(node.name, []).append(name)
    assert {cls: where for cls, where in homes.items() if len(where) > 1} == {}
