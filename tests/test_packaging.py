"""The distribution's metadata: declared dependencies cover the imports, torch is a range, nn-Meter is an extra."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "search_spaces", "latency", "supernet", "experiments", "conf")
NNMETER_ONLY = {"nn_meter", "onnxsim"}  # imported only by latency/nnmeter/, behind a clear error


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement):
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9_.-]+)", requirement)[1]).lower()


def _imports():
    """Top-level names of every module the packages import (function-level imports included)."""
    found = {}
    for pkg in PACKAGES:
        for py in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(py.read_text(), str(py))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for n in names:
                    found.setdefault(n.split(".")[0], str(py.relative_to(ROOT)))
    return {k: v for k, v in found.items() if k not in sys.stdlib_module_names and k not in PACKAGES}


def test_every_third_party_import_is_declared():
    project = _pyproject()["project"]
    core = {_name(r) for r in project["dependencies"]}
    nnmeter = {_name(r) for r in project["optional-dependencies"]["nnmeter"]}
    dists = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(_imports().items()):
        wanted = {_name(d) for d in dists.get(module, [module])}
        declared = nnmeter if module in NNMETER_ONLY else core
        if not wanted & declared:
            missing.append(f"{module} ({where}) -> {sorted(wanted)}")
    assert missing == []


def test_torch_is_a_range_and_nnmeter_an_extra():
    project = _pyproject()["project"]
    (torch,) = [r for r in project["dependencies"] if _name(r) == "torch"]
    assert "==" not in torch and ">=" in torch  # a user's CUDA torch is kept
    core = {_name(r) for r in project["dependencies"]}
    assert not core & {"nn-meter", "onnxsim", "setuptools"}
    extra = project["optional-dependencies"]["nnmeter"]
    assert {_name(r) for r in extra} == {"nn-meter", "onnxsim", "setuptools"}
    assert any(_name(r) == "setuptools" and "<81" in r for r in extra)
    assert "scikit-learn<1.3" in (ROOT / "pyproject.toml").read_text()
    assert "scikit-learn < 1.3" in (ROOT / "README.md").read_text()
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "torch==2.13.0" in setup and ".[test,nnmeter]" in setup  # the tests use nn-Meter
    assert setup.index("torch==2.13.0") < setup.index(".[test,nnmeter]")


def test_license_urls_and_typed_markers():
    project = _pyproject()["project"]
    assert "MIT License" in (ROOT / "LICENSE").read_text() and "QuadraNAS authors" in (ROOT / "LICENSE").read_text()
    assert project["urls"] and all(u.startswith("https://") for u in project["urls"].values())
    for pkg in ("nas", "search_spaces", "latency", "supernet", "experiments"):
        assert (ROOT / pkg / "py.typed").is_file(), pkg
    assert "py.typed" in str(_pyproject()["tool"]["setuptools"]["package-data"])
