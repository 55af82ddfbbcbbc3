"""The library's floors (docs/architecture.md): each package imports only the floors below it, argparse lives
only in ``tips/cli``, ``tips/`` has no loose modules, and the wheel installs exactly the packages we name."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_import_cycles import SRC, _imports, import_graph, module_files

ROOT = Path(__file__).resolve().parents[1]
# floor → the floors it may import directly (the table of docs/architecture.md)
MAY_IMPORT: dict[str, set[str]] = {
    "io": set(),
    "models": set(),
    "losses": set(),
    "formats": {"models", "io"},
    "data": {"io", "models"},
    "train": {"models", "formats", "data", "losses", "io"},
    "inference": {"models", "formats", "io"},
    "index": {"inference", "models", "formats", "io"},
    "serve": {"inference", "formats"},
    "cli": {"io", "models", "losses", "formats", "data", "train", "inference", "index", "serve"},
}
FLOORS = sorted(MAY_IMPORT)
TOP_LEVEL_PACKAGES = {"tips", "tips_eval", "tips_pipelines", "tips_reference"}


def reachable(floor: str) -> set[str]:
    """The floors ``floor`` may reach, directly or through the floors it imports."""
    seen, todo = set(), [floor]
    while todo:
        for below in MAY_IMPORT[todo.pop()]:
            if below not in seen:
                seen.add(below)
                todo.append(below)
    return seen


def floor_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tips" and parts[1] in MAY_IMPORT else None


def test_argparse_is_imported_only_by_the_command_line_floor():
    offenders = []
    for path in sorted((SRC / "tips").rglob("*.py")):
        if path.is_relative_to(SRC / "tips" / "cli"):
            continue
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n.split(".")[0] == "argparse" for n in names):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, f"argparse outside tips/cli: {offenders}"


def test_every_import_edge_goes_down_the_floors():
    graph = import_graph(module_files(("tips",)))
    wrong = sorted(
        f"{v} → {w} (line {line})"
        for v, edges in graph.items() if floor_of(v)
        for w, line in edges.items()
        if floor_of(w) and floor_of(w) != floor_of(v) and floor_of(w) not in MAY_IMPORT[floor_of(v)]
    )
    assert not wrong, "imports against the floors: " + "; ".join(wrong)


def test_importing_a_floor_loads_no_floor_above_it():
    code = (
        "import importlib, json, sys\n"
        "importlib.import_module('tips.' + sys.argv[1])\n"
        "print(json.dumps(sorted({m.split('.')[1] for m in sys.modules if m.startswith('tips.')})))\n"
    )
    for floor in FLOORS:
        if not (SRC / "tips" / floor).is_dir():
            continue  # a floor an open issue has still to build (serve)
        out = subprocess.run([sys.executable, "-c", code, floor], capture_output=True, text=True, check=True).stdout
        loaded = set(json.loads(out)) & set(FLOORS)
        assert loaded <= reachable(floor) | {floor}, (floor, sorted(loaded - reachable(floor) - {floor}))


def test_no_import_is_resolved_from_a_string_except_the_public_table():
    """``importlib.import_module`` / ``__import__`` of tips modules happens only in ``tips/__init__.py``; elsewhere
    only third-party optional packages are imported by name, and only from literal strings."""
    found = []
    for path in sorted((SRC / "tips").rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name not in ("import_module", "__import__", "require") or not node.args:
                continue
            arg = node.args[0]
            literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            if literal and arg.value.split(".")[0] != "tips":
                continue  # an optional third-party package, e.g. require("onnxruntime", ...)
            if rel in ("tips/__init__.py", "tips/formats/optional.py") and not literal:
                continue  # the public table; require()'s own body (its callers are checked above)
            found.append(f"{rel}:{node.lineno}")
    assert not found, f"string-resolved imports: {found}"


def test_the_public_table_names_real_objects_and_loads_lazily():
    code = (
        "import sys, tips\n"
        "before = sorted(m for m in sys.modules if m.startswith('tips.'))\n"
        "missing = [n for n in tips.__all__ if getattr(tips, n, None) is None]\n"
        "print(before, missing)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"


def test_the_library_has_no_loose_modules():
    assert sorted(p.name for p in (SRC / "tips").glob("*.py")) == ["__init__.py"]


def test_each_floor_says_what_it_holds_and_may_import():
    for floor in FLOORS:
        init = SRC / "tips" / floor / "__init__.py"
        if init.exists():
            doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
            assert doc.startswith(f"tips.{floor}:") and "import" in doc.lower(), floor


@pytest.mark.slow  # builds a wheel (about 20 s)
def test_the_wheel_installs_exactly_our_top_level_packages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("tips-*.whl")
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/")[0] for n in z.namelist() if not n.split("/")[0].endswith(".dist-info")}
        data = {n for n in z.namelist() if n.startswith("tips/inference/vocabularies/")}
    assert tops == TOP_LEVEL_PACKAGES
    # the open-vocabulary presets and class lists are package data: tips-predict --preset works from a wheel
    assert "tips/inference/vocabularies/presets.json" in data and len(data) == 9
