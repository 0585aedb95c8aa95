"""Imports flow nas -> supernet -> search_spaces and nas -> latency -> search_spaces, never back."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "search_spaces": {"latency", "supernet", "nas", "experiments"},
    "latency": {"supernet", "nas", "experiments"},
    "supernet": {"latency", "nas", "experiments"},
    "nas": {"experiments"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_downwards(package):
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN[package])
           for p in (ROOT / package).rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def test_benchmarks_do_not_import_diagnostics():
    """experiments/diagnostics explain the benchmarks; a benchmark never depends on a diagnostic."""
    bad = []
    for p in (ROOT / "experiments").glob("*.py"):
        tree = ast.parse(p.read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        if any(m.startswith("experiments.diagnostics") for m in mods):
            bad.append(p.name)
    assert bad == []
