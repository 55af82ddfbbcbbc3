"""tips-demo end to end at a toy size: scenes → accelerate launch pretraining → four probes → table."""

import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow  # ~5 minutes on 2 cores: the four probes keep their full 1,000 iterations
def test_demo_runs_every_stage_and_reports_a_table(tmp_path):
    work = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "eval.demo", "--workdir", str(work), "--steps", "3", "--num-pretrain", "96"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "had defaults used instead" not in proc.stdout + proc.stderr  # the quick start prints no launch notice
    report = (work / "results.md").read_text()
    rows = re.findall(r"^\| (object-class mIoU|all-class mIoU|object-pixel depth RMSE|all-pixel depth RMSE).*?\| "
                      r"([0-9.]+) \| ([0-9.]+) \| (yes|no) \|$", report, flags=re.M)
    assert len(rows) == 4, report
    assert (work / "run" / "final" / "model.safetensors").is_file()
    pictures = re.findall(r"^- (.+\.png)$", report, flags=re.M)
    assert len(pictures) == 4 and all(Path(p).is_file() for p in pictures)
    assert "3/200" not in proc.stdout and "3/3" in proc.stdout  # the step override reached the trainer's bar
