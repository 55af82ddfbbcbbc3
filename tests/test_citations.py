"""Comments, docstrings, configs and docs cite only documents the repository ships (they state the fact otherwise)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".cff", ".sh"}
SECTION = re.compile(r"§")
SHIPPED_DOC = re.compile(r"[\w./-]+\.md")
CAPS_DOC = re.compile(r"\b[A-Z][A-Z_]+\.md\b")  # TIPS.md, PEERS.md: the style of the unshipped specs


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.splitlines() if Path(line).suffix in SUFFIXES and (ROOT / line).is_file()]


def unshipped_citations(files: list[Path], root: Path = ROOT) -> list[str]:
    """``file:line: text`` for each section sign without a shipped document on its line, and each
    upper-case ``NAME.md`` that is not in the repository."""
    shipped = {p.name for p in files} | {str(p.relative_to(root)) for p in files}
    found = []
    for path in files:
        if path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            docs = [d.removeprefix("../") for d in SHIPPED_DOC.findall(line)]
            cited_ok = any(d in shipped or Path(d).name in shipped for d in docs)
            missing = [d for d in CAPS_DOC.findall(line) if d not in shipped]
            if (SECTION.search(line) and not cited_ok) or missing:
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return found


def test_no_comment_or_doc_cites_a_document_the_repository_does_not_ship():
    found = unshipped_citations(tracked_files())
    assert not found, "cite the fact, not an unshipped document:\n" + "\n".join(found)


def test_the_citation_check_flags_unshipped_specs_and_accepts_shipped_docs(tmp_path):
    bad, good = tmp_path / "bad.py", tmp_path / "good.md"
    bad.write_text('"""The iBOT loss (TIPS.md §5.5)."""\n# LR rule, spec §5.9\n', encoding="utf-8")
    good.write_text("See good.md §2 for the layout.\n", encoding="utf-8")
    assert [f.split(":")[1] for f in unshipped_citations([bad, good], tmp_path)] == ["1", "2"]
