"""The shape of es_workers' import graph: figures to compare before and after a change of
layout (issue 19's closing note).

    python bench/import_graph.py [--longest 10]

Prints the package's modules, the layers of the import-linter contract in pyproject.toml,
the internal imports (distinct importer -> imported pairs of es_workers modules, as grimp
finds them, imports inside functions included), the imports from the core (store,
async_store, stream, async_stream) into adapters (redis/, memory/, workers/, settings,
wiring, app/), which third-party packages `import es_workers.stream` loads, and the
longest functions by lines (ast: first to last line, decorators excluded).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "es_workers"
CORE = ("store", "async_store", "stream", "async_stream")
ADAPTERS = ("redis", "memory", "workers", "settings", "wiring", "app")
HEAVY = ("dramatiq", "redis", "pydantic_settings", "fakeredis")


def contract_layers() -> int:
    """How many layers the first layers contract of pyproject.toml lists."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for contract in config["tool"]["importlinter"]["contracts"]:
        if contract["type"] == "layers":
            return len(contract["layers"])
    return 0


def top(module: str) -> str:
    """`es_workers.redis.storage` -> `redis`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def core_to_adapters(graph: grimp.ImportGraph) -> list[str]:
    """`core -> adapter` imports (direct ones), sorted."""
    found = []
    for name in CORE:
        importer = f"{PACKAGE}.{name}"
        if importer not in graph.modules:
            continue
        for imported in graph.find_modules_directly_imported_by(importer):
            if top(imported) in ADAPTERS:
                found.append(f"{name} -> {imported.removeprefix(PACKAGE + '.')}")
    return sorted(found)


def loaded_by(module: str) -> list[str]:
    """The heavy third-party packages importing `module` loads, in a fresh interpreter."""
    code = (f"import sys, {module}; print(' '.join(sorted(n for n in {HEAVY!r} "
            "if n in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    return done.stdout.split()


def longest_functions(count: int) -> list[tuple[int, str]]:
    """The `count` longest functions and methods of the package: (lines, where)."""
    found = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                found.append((lines, where))
    return sorted(found, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--longest", type=int, default=10)
    arguments = parser.parse_args()
    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    modules = sorted(m for m in graph.modules if m.startswith(PACKAGE))
    imports = {(importer, imported) for importer in modules
               for imported in graph.find_modules_directly_imported_by(importer)}
    print(f"modules: {len(modules)}")
    print(f"layers in the import-linter contract: {contract_layers()}")
    print(f"internal imports (importer -> imported pairs): {len(imports)}")
    upward = core_to_adapters(graph)
    print(f"core -> adapter imports: {len(upward)}")
    for line in upward:
        print(f"  {line}")
    for module in (f"{PACKAGE}.stream", f"{PACKAGE}.store"):
        print(f"`import {module}` loads: {', '.join(loaded_by(module)) or 'none of'} "
              f"({', '.join(HEAVY)})")
    print(f"{arguments.longest} longest functions (lines):")
    for lines, where in longest_functions(arguments.longest):
        print(f"  {lines:4d}  {where}")


if __name__ == "__main__":
    main()
