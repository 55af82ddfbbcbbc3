"""bench/gpu.sh --dry-run: every section of the prepared GPU measurement runs on CPU with a tiny model and reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


def test_the_dry_run_measures_every_section_and_writes_json_and_markdown(tmp_path):
    proc = _run("--dry-run", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["failed_sections"] == {} and report["machine"]["commit"]
    rows = report["rows"]
    assert {r["section"] for r in rows} == {"train", "fsdp", "extract", "predict"}
    assert all(r["images_per_s"] > 0 for r in rows)
    assert {r["row"] for r in rows if r["section"] == "train"} == {"step", "step + torch.compile"}
    assert {r["row"] for r in rows if r["section"] == "fsdp"} == {"plain (one device)", "FSDP (one device)"}
    extract = {r["row"]: r for r in rows if r["section"] == "extract"}
    assert {"tips 56 px", "transformers-sdpa 56 px"} <= set(extract)
    assert extract["transformers-sdpa 56 px"]["ratio_tips_over_this"] > 0
    table = (tmp_path / "gpu.md").read_text()
    assert table.count("\n| ") == len(rows) + 1  # the header, then one line per row


def test_a_section_that_runs_out_of_time_is_reported_and_the_report_still_written(tmp_path):
    proc = _run("--dry-run", "--out", str(tmp_path), "--sections", "predict", "--section-timeout", "1")
    assert proc.returncode == 1
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["rows"] == [] and report["failed_sections"] == {"predict": "stopped after 1 s"}
    assert "predict failed: stopped after 1 s" in (tmp_path / "gpu.md").read_text()
