"""tips-demo end to end at a toy size: scenes → accelerate launch pretraining → eight probes → table, JSON, picture."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tips_eval.demo_report import METRICS


@pytest.mark.slow  # about a minute on 2 idle cores: ten subprocesses, each importing torch
def test_demo_runs_every_stage_and_reports_a_table(tmp_path):
    work = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "tips_eval.demo", "-o", str(work), "--steps", "2", "--num-pretrain", "64",
         "--num-train", "8", "--num-val", "8", "--probe-iterations", "5"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "had defaults used instead" not in proc.stdout + proc.stderr  # the quick start prints no launch notice
    assert "2/150" not in proc.stdout and "2/2" in proc.stdout  # the step override reached the trainer's bar
    assert (work / "run" / "final" / "model.safetensors").is_file()
    results = json.loads((work / "results.json").read_text())
    assert list(results["metrics"]) == [m.key for m in METRICS]
    assert all(row["verdict"] in ("trained", "random", "none") for row in results["metrics"].values())
    report = (work / "results.md").read_text()
    rows = re.findall(r"^\| (.+?) \| ([↑↓]) \| ([0-9.]+) \| ([0-9.]+) \| (.+) \|$", report, flags=re.M)
    assert [r[0] for r in rows] == [m.label for m in METRICS], report
    page = Image.open(results["picture"])
    assert page.width > page.height / 2  # two columns: trained beside random
    assert Image.open(results["dense_picture"]).width > 0
    assert set(results["timings_s"]) >= {"data", "pretraining", "retrieval (trained)", "zero-shot (random)"}
