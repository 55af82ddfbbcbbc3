"""The GPU driver of the long ablation preset: reading a progress bar, and the step count a budget affords."""

from pathlib import Path

import pytest

from experiments import ablation
from experiments import long_on_gpu

# What the trainer's bar leaves in a log (carriage returns between updates), cut to its updates.
LOG = ("pretraining:   0%|          | 0/100 [00:00<?, ?it/s]\rpretraining:   1%|          | 1/100 [00:09<15:51, 9.6s/it]"
       "\rpretraining:  30%|███       | 30/100 [00:12<00:07, 9.3it/s, loss=20.1]"
       "\rpretraining: 100%|██████████| 100/100 [00:19<00:00, 10.1it/s, loss=18.2]\nfinal export: runs/x/final\n")


def test_seconds_per_step_leaves_out_the_slow_first_steps():
    assert long_on_gpu.seconds_per_step(LOG) == pytest.approx((19 - 12) / (100 - 30))


def test_seconds_per_step_reads_hours_and_falls_back_to_the_whole_bar():
    assert long_on_gpu.seconds_per_step("pretraining: 100%|█| 3/3 [1:00:03<00:00, 1201.0s/it]") == pytest.approx(1201)
    with pytest.raises(ValueError, match="no progress bar"):
        long_on_gpu.seconds_per_step("Traceback (most recent call last):\n")


def test_affordable_steps_rounds_down_and_caps_at_the_preset():
    assert long_on_gpu.affordable_steps(left_s=500, s_per_step=0.13, reserve_s=200, most=3000) == 2250
    assert long_on_gpu.affordable_steps(left_s=900, s_per_step=0.13, reserve_s=200, most=3000) == 3000
    assert long_on_gpu.affordable_steps(left_s=150, s_per_step=0.13, reserve_s=200, most=3000) == 0
    assert long_on_gpu.affordable_steps(left_s=300, s_per_step=10, reserve_s=200, most=3000, quantum=1) == 10


def test_concurrent_runs_share_the_cores(monkeypatch):
    monkeypatch.setattr(ablation.os, "cpu_count", lambda: 16)
    assert ablation.threads_per_job(4) == 4 and ablation.threads_per_job(32) == 1
    assert ablation.loader_workers(ablation.PRESETS["long"], 4) == ["data.num_workers=3"]
    assert ablation.loader_workers(ablation.PRESETS["small"], 4) == []  # the demo recipe's own workers
    cmd = ablation.train_command(ablation.PRESETS["long"], "tips", 0, Path("/data"), Path("/run"), "cpu", jobs=4)
    assert cmd[cmd.index("--num_cpu_threads_per_process") + 1] == "4"
