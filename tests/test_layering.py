"""The floors of the code base (docs/ARCHITECTURE.md "Floors"), enforced on every import.

An AST scan of every ``.py`` under the six top-level folders finds every import, lazy ones inside
functions and ``if TYPE_CHECKING:`` ones included (plus ``importlib.import_module("literal")``), resolves
relative imports, and fails naming the file, the line and the forbidden edge:

* ``streams/`` is the floor: it imports no torch and nothing of processors/, trainers/, bench/, tests/, and
  of infra/ only the leaf modules;
* ``processors/`` and ``trainers/`` stand side by side: neither imports the other; of infra/ only the leaves;
* the leaf modules of infra/ (:data:`LEAVES`) import nothing of the project, nor does ``infra/__init__.py``
  (importing a leaf runs it);
* nothing that ships (streams, processors, trainers, infra, bench) imports ``tests/``.

A second check imports each ``streams`` module in a fresh interpreter and asserts torch was not loaded
(the floor could reach torch through a third-party module too).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("streams", "processors", "trainers", "infra", "bench", "tests")
PROJECT = frozenset(FOLDERS)
LEAVES = frozenset({"infra.settings", "infra.metrics"})
"""The leaf modules of infra/: the settings object and the metrics registry; they import nothing of the
project, so every floor may import them."""

# (importing file, imported module) -> why the edge is tolerated for now. Each entry must still occur
# (a stale entry fails the test: delete it once the edge is gone).
ALLOWED: dict[tuple[str, str], str] = {
}


@dataclass(frozen=True)
class Edge:
    """One import: ``path`` (relative to the repository, POSIX), ``line``, and the absolute ``module``
    name imported (``from a.b import c`` gives ``a.b.c`` when ``a.b.c`` is a module, else ``a.b``)."""

    path: str
    line: int
    module: str


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(source: str, path: str, module: str, is_package: bool = False) -> list[Edge]:
    """Every import in ``source`` (the file ``path``, module ``module``), wherever it sits: top level,
    inside functions, under ``if TYPE_CHECKING:``; relative imports resolved against ``module``;
    ``importlib.import_module("<literal>")`` counts too. Raises SyntaxError for unparsable source."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    edges: list[Edge] = []
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Import):
            edges += [Edge(path, node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                edges.append(Edge(path, node.lineno, sub if alias.name != "*" and _is_module(sub) else target))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                edges.append(Edge(path, node.lineno, node.args[0].value))
    return edges


def forbidden(importer: str, imported: str) -> str | None:
    """Why module ``importer`` may not import module ``imported`` (None when it may)."""
    floor, top = importer.split(".")[0], imported.split(".")[0]
    leaf_import = any(imported == leaf or imported.startswith(leaf + ".") for leaf in LEAVES)
    if (importer in LEAVES or importer == "infra") and top in PROJECT:  # infra/__init__.py runs with every leaf
        return "a leaf module of infra/ (and infra/__init__.py, which runs with it) imports nothing of the project"
    if floor != "tests" and top == "tests":
        return "nothing that ships imports tests/"
    if floor == "streams":
        if top == "torch":
            return "streams/ is the floor: no torch"
        if top in ("processors", "trainers", "bench"):
            return f"streams/ is the floor: it does not import {top}/"
        if top == "infra" and not leaf_import:
            return "streams/ imports only the leaf modules of infra/ (infra.settings, infra.metrics)"
    if floor in ("processors", "trainers"):
        other = "trainers" if floor == "processors" else "processors"
        if top == other:
            return f"{floor}/ and {other}/ stand side by side: neither imports the other"
        if top == "bench":
            return f"{floor}/ does not import bench/"
        if top == "infra" and not leaf_import:
            return f"{floor}/ imports only the leaf modules of infra/ (infra.settings, infra.metrics)"
    return None


def scan() -> tuple[list[str], set[tuple[str, str]]]:
    """(violations as 'file:line: importer -> imported (rule)', allowlisted edges seen)."""
    violations, seen = [], set()
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            module = _module_name(path)
            for edge in imports_of(path.read_text(), rel, module, path.name == "__init__.py"):
                why = forbidden(module, edge.module)
                if why is None:
                    continue
                key = (rel, ".".join(edge.module.split(".")[:2]))
                if key in ALLOWED:
                    seen.add(key)
                    continue
                line = f"{rel}:{edge.line}: {module} -> {edge.module} ({why})"
                if line not in violations:  # `from a import b, c` is one edge per name
                    violations.append(line)
    return violations, seen


def test_every_import_respects_the_floors():
    violations, seen = scan()
    assert not violations, "forbidden imports (docs/ARCHITECTURE.md, Floors):\n" + "\n".join(violations)
    stale = sorted(set(ALLOWED) - seen)
    assert not stale, f"allowlisted edges that no longer occur (delete them from ALLOWED): {stale}"


def test_the_scan_sees_lazy_relative_and_literal_imports():
    """The scanner itself: a lazy import inside a function, a relative import and an importlib literal
    are edges; the rules refuse them where they go up."""
    source = ("import os\n"
              "def f():\n"
              "    from trainers.models import load_predictor\n"
              "    import importlib; importlib.import_module('torch')\n"
              "from .consumer import Event\n"
              "from . import topics\n")
    edges = imports_of(source, "streams/x.py", "streams.x")
    assert [(e.line, e.module) for e in edges] == [
        (1, "os"), (5, "streams.consumer"), (6, "streams.topics"), (3, "trainers.models"), (4, "importlib"),
        (4, "torch")]
    assert forbidden("streams.x", "trainers.models") and forbidden("streams.x", "torch")
    assert forbidden("streams.x", "infra.cli") and forbidden("streams.x", "infra.settings") is None
    assert forbidden("processors.drift", "trainers.models") and forbidden("trainers.worker", "processors.app")
    assert forbidden("processors.drift", "infra.clickhouse") and forbidden("trainers.worker", "infra.metrics") is None
    assert forbidden("infra.settings", "streams.kafka_config") and forbidden("infra.metrics", "infra.settings")
    assert forbidden("infra", "infra.cli") and forbidden("infra.cli", "infra.settings") is None
    assert forbidden("bench.faults", "tests.helpers.processes") and forbidden("infra.cli", "tests.helpers")
    assert forbidden("infra.cli", "trainers.serving") is None and forbidden("tests.test_x", "bench.run") is None


STREAMS_MODULES = sorted(_module_name(p) for p in (ROOT / "streams").rglob("*.py"))


def test_no_streams_module_loads_torch():
    """Each streams module imported alone, in a fresh interpreter, leaves torch unloaded."""
    code = "import importlib, sys; importlib.import_module(sys.argv[1]); print('torch' in sys.modules)"

    def run(module: str) -> tuple[str, str]:
        done = subprocess.run([sys.executable, "-c", code, module], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        return module, done.stdout.strip() if done.returncode == 0 else f"import failed: {done.stderr[-2000:]}"

    with ThreadPoolExecutor(4) as pool:
        results = dict(pool.map(run, STREAMS_MODULES))
    assert "streams.sdk" in results and "streams.registry" in results
    loaded = {m: r for m, r in results.items() if r != "False"}
    assert not loaded, f"streams modules that load torch (or fail to import): {loaded}"
