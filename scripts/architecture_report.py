"""How the library is laid out, in the figures the restructure is judged by.

    .venv/bin/python scripts/architecture_report.py [--json]

Prints the largest modules, imports that point against the loop's run order, the import cycles between issueops modules (counting imports inside
functions, which hide cycles from a plain import), how many imports are function-local, and which
files read `ISSUEOPS_*` settings from the environment. Only the standard library reads the code
(ast); networkx (installed with torch) finds the cycles.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

import networkx

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "issueops"
# The loop's stages in run order, then the code that drives them: an import from a stage to a later one
# (training importing pipeline, say) is the data climbing back up the layers.
RUN_ORDER = (
    "config errors logs store github",
    "spec",
    "data",
    "training",
    "evaluation",
    "registry",
    "packaging",
    "serving",
    "monitoring",
    "reporting",
    "pipeline",
    "lifecycle",
    "bridge",
    "cli mcp_server __main__",
)
SETTING = re.compile(r"""["'](ISSUEOPS_[A-Z0-9_]+)["']""")
ENVIRON = re.compile(r"os\.environ|os\.getenv|environ\.get|getenv\(")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_rank(module: str) -> int | None:
    """Where a module's stage sits in RUN_ORDER (None for the package itself)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return next((rank for rank, names in enumerate(RUN_ORDER) if parts[1] in names.split()), None)


def imported(tree: ast.AST, name: str, is_package: bool) -> list[tuple[str, bool]]:
    """Every issueops module this one imports, and whether the import sits inside a function."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((alias.name, inner) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = name.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append((base, inner))
                found.extend((f"{base}.{alias.name}", inner) for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def report() -> dict:
    files = sorted((ROOT / PACKAGE).rglob("*.py"))
    modules = {module_name(path): path for path in files}
    graph = networkx.DiGraph()
    local_imports = 0
    for name, path in modules.items():
        graph.add_node(name)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        seen: set[str] = set()
        for target, local in imported(tree, name, path.name == "__init__.py"):
            # "from issueops.x import y": y is a module when issueops/x/y.py exists, else a name in x
            if target in modules and target != name and target not in seen:
                seen.add(target)
                graph.add_edge(name, target)
                local_imports += local
    upward = sorted(
        f"{source} -> {target}"
        for source, target in graph.edges
        if None not in (stage_rank(source), stage_rank(target)) and stage_rank(source) < stage_rank(target)
    )
    cycles = [
        sorted(component) for component in networkx.strongly_connected_components(graph) if len(component) > 1
    ]
    sizes = sorted(
        ((len(p.read_text(encoding="utf-8").splitlines()), n) for n, p in modules.items()), reverse=True
    )
    readers: dict[str, list[str]] = {}
    for path in [
        *files,
        *(ROOT / "operator").rglob("*.py"),
        *(ROOT / "components").rglob("*.py"),
        *(ROOT / "pipelines").rglob("*.py"),
    ]:
        text = path.read_text(encoding="utf-8")
        if ENVIRON.search(text):
            names = sorted(set(SETTING.findall(text)))
            if names:
                readers[str(path.relative_to(ROOT))] = names
    flat = sorted(n for n, p in modules.items() if p.parent == ROOT / PACKAGE and p.name != "__init__.py")
    return {
        "modules": len(modules),
        "flat_modules": len(flat),
        "largest": [{"module": n, "lines": lines} for lines, n in sizes[:8]],
        "over_600_lines": [n for lines, n in sizes if lines > 600],
        "cycles": cycles,
        "modules_in_cycles": sum(len(c) for c in cycles),
        "function_local_imports": local_imports,
        "imports_against_run_order": upward,
        "environ_readers": readers,
        "settings_read_from_environ": len({v for names in readers.values() for v in names}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    figures = report()
    if parser.parse_args().json:
        json.dump(figures, sys.stdout, indent=2)
        print()
        return 0
    print(f"modules: {figures['modules']} ({figures['flat_modules']} flat in {PACKAGE}/)")
    print("largest: " + ", ".join(f"{m['module']} {m['lines']}" for m in figures["largest"]))
    print(f"over 600 lines: {len(figures['over_600_lines'])} {figures['over_600_lines']}")
    print(f"import cycles: {len(figures['cycles'])} ({figures['modules_in_cycles']} modules)")
    for cycle in figures["cycles"]:
        print("  " + " <-> ".join(cycle))
    print(f"function-local imports of issueops modules: {figures['function_local_imports']}")
    print(
        f"imports from a stage to a later one (against the run order): {len(figures['imports_against_run_order'])}"
    )
    for edge in figures["imports_against_run_order"]:
        print("  " + edge)
    readers = figures["environ_readers"]
    print(
        f"ISSUEOPS_* read from the environment: {figures['settings_read_from_environ']} names in {len(readers)} files"
    )
    for path, names in readers.items():
        print(f"  {path}: {len(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
