"""pyproject.toml declares what the code imports, and imports (or names a reason for) what it declares."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from test_import_cycles import _imports

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"tips", "tips_eval", "tips_pipelines", "tips_reference", "bench", "experiments"}
SCRIPT_FOLDERS = ("tests",)  # test files import siblings by bare name (``formats_spm``)
# Declared without a direct import: another library loads them.
USED_THROUGH = {"tensorboard": "accelerate's tensorboard tracker (Accelerator(log_with='tensorboard'))"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str], extras: dict[str, list[str]]) -> set[str]:
    """Normalised distribution names; a self-reference ``tips[deploy]`` is replaced by that extra's names."""
    names: set[str] = set()
    for req in requirements:
        own = re.fullmatch(r"tips\[([a-z,]+)\]", req)
        if own:
            for extra in own.group(1).split(","):
                names |= _requirement_names(extras[extra], extras)
        else:
            names.add(_normalise(re.match(r"[A-Za-z0-9_.\-]+", req).group(0)))
    return names


def declared() -> dict[str, set[str]]:
    """Distribution names of the dependencies (key ``""``) and of each extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    return {"": _requirement_names(project["dependencies"], extras),
            **{name: _requirement_names(reqs, extras) for name, reqs in extras.items()}}


def _folder(name: str) -> Path:
    """A package under src/, or a folder of scripts (bench, experiments) at the root."""
    return ROOT / "src" / name if (ROOT / "src" / name).is_dir() else ROOT / name


@functools.cache
def imported_top_levels(folders: tuple[str, ...]) -> dict[str, str]:
    """Third-party top-level module → one file that imports it (stdlib, first-party and relative imports left out)."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted(_folder(folder).rglob("*.py")):
            for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if node.level == 0 and node.module else [])
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in FIRST_PARTY or top in _siblings():
                        continue
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


@functools.cache
def _siblings() -> frozenset[str]:
    return frozenset(p.stem if p.suffix == ".py" else p.name for folder in SCRIPT_FOLDERS
                     for p in _folder(folder).iterdir() if p.suffix == ".py" or p.is_dir())


@functools.cache
def _installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions(module: str) -> set[str]:
    return {_normalise(d) for d in _installed().get(module, [module])}


def test_every_import_of_the_package_is_a_declared_dependency():
    deps = declared()[""]
    missing = {m: f for m, f in imported_top_levels(("tips", "tips_eval", "tips_pipelines", "tips_reference")).items()
               if not _distributions(m) & deps}
    assert not missing, f"imported but not in [project] dependencies: {missing}"


def test_every_import_of_the_tests_and_benchmarks_is_declared_with_the_test_extra():
    deps = declared()[""] | declared()["test"]
    missing = {m: f for m, f in imported_top_levels(("tests", "bench", "experiments")).items()
               if not _distributions(m) & deps}
    assert not missing, f"imported but neither a dependency nor in the test extra: {missing}"


def test_every_declared_dependency_is_imported_or_says_what_loads_it():
    imported = set().union(*(_distributions(m) for m in imported_top_levels(("tips", "tips_eval", "tips_pipelines", "tips_reference"))))
    unused = declared()[""] - imported - set(USED_THROUGH)
    assert not unused, f"declared but never imported by tips/, tips_eval/ or tips_pipelines/: {sorted(unused)}"
