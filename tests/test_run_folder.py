"""A run folder belongs to one run: exact resume with stochastic depth, a checkpoint that runs no code from the
folder, a lock against a second run, refusal to start afresh over an earlier run, damaged checkpoints skipped,
and a full disk reported as one. In-process on one process; the 2-process cases are in test_scale.py."""

import errno
import json
import logging
import os
import pickle
import shutil
import socket
import time
import types
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from test_trainer import TINY, write_shards

from tips.train import checkpointing
from tips.cli.train import main
from tips.train.checkpointer import Checkpointer, DiskFullError, read_tensors
from tips.train.config import load_config
from tips.train.run_lock import RunFolderBusy, RunLock
from tips.train.trainer import Trainer

# Two image blocks, so that timm's linspace gives the second one a drop-path rate of 0.1 (one block gets 0).
DEEP = [*TINY, "model.overrides={vision.depth: 2}", "model.drop_path_rate=0.1", "optim.lr=1e-3",
        "optim.warmup_frac=0", "run.save_every=2", "run.keep_last=10", "data.num_workers=0"]


class Payload:
    """Unpickling this creates ``marker``: what a planted file would run if anything unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def plant(folder: Path, marker: Path) -> None:
    """Pickled payloads where DCP (``.metadata``, ``.distcp``) and accelerate (``*.pkl``) would read them."""
    payload = pickle.dumps(Payload(marker))
    for name in (".metadata", "__0_0.distcp", "random_states_0.pkl", "optimizer.bin"):
        (folder / name).write_bytes(payload)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return write_shards(tmp_path_factory.mktemp("shards"), shards=2)


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def make_trainer(shards: str, out: Path, *overrides: str, steps: int = 4) -> Trainer:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return Trainer(load_config(None, [f"data.train={shards}", f"run.output_dir={out}", f"run.steps={steps}", *DEEP,
                                      *overrides]))


@pytest.fixture(scope="module")
def run4(shards, tmp_path_factory) -> Path:
    """An uninterrupted 4-step run with stochastic depth, checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("run4")
    trainer = make_trainer(shards, out)
    assert any(getattr(m, "drop_prob", 0.0) > 0 for m in trainer.model.vision.modules())
    trainer.fit()
    return out


def copy_run(run: Path, to: Path, steps: tuple[int, ...] = (2, 4)) -> Path:
    """The checkpoints ``steps`` of ``run`` in a new folder: what a run killed after its last one leaves."""
    for step in steps:
        name = checkpointing.step_dir_name(step)
        shutil.copytree(run / "checkpoints" / name, to / "checkpoints" / name)
    return to


def all_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    return read_tensors(checkpoint, "")


# --------------------------------------------------------------------------- exact resume
def test_resume_with_stochastic_depth_is_bit_identical_to_the_uninterrupted_run(shards, run4, tmp_path, caplog):
    resumed = copy_run(run4, tmp_path / "resumed", steps=(2,))
    with caplog.at_level(logging.INFO, logger="tips.train"):
        make_trainer(shards, resumed, "run.resume=latest").fit()
    assert f"resumed from step 2 ({resumed / 'checkpoints' / 'step-00000002'})" in caplog.text
    a, b = (all_tensors(run / "checkpoints" / "step-00000004") for run in (run4, resumed))
    assert a.keys() == b.keys() and any(k.startswith("optimizer.") for k in a) and any(k.startswith("teacher.") for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


# --------------------------------------------------------------------------- nothing in the folder runs
def test_pickles_planted_in_a_checkpoint_never_run_on_resume(shards, run4, tmp_path):
    marker = tmp_path / "marker"
    out = copy_run(run4, tmp_path / "run")
    latest = out / "checkpoints" / "step-00000004"
    plant(latest, marker)
    # a non-tensor item: JSON is read as data, whatever it holds
    state = json.loads((latest / "trainer.json").read_text())
    state["optimizer"]["values"]["student.model.vision.pos_embed"] = {"payload": pickle.dumps(Payload(marker)).hex()}
    (latest / "trainer.json").write_text(json.dumps(state))
    trainer = make_trainer(shards, out, "run.resume=latest", steps=5)
    trainer.start()
    assert trainer.resumed_from == latest and trainer.step == 4
    trainer.close()

    # in the tensor folder itself: the verification refuses it, and the reader never opens such files either
    plant(latest / "state", marker)
    trainer = make_trainer(shards, out, f"run.resume={latest}", steps=5)
    with pytest.raises(ValueError, match=r"holds files its trainer.json does not list"):
        trainer.start()
    trainer.close()
    trainer.checkpointer.load(latest, trainer.core, trainer.optimizer.optimizer, trainer.teacher)
    assert not marker.exists()


# --------------------------------------------------------------------------- one run per folder
def test_a_second_run_into_a_live_runs_folder_is_refused_naming_host_and_pid(shards, tmp_path):
    tmp_path.joinpath("run.lock").write_text(json.dumps({"host": "node-7", "pid": 4242, "started": time.time()}))
    with pytest.raises(RunFolderBusy, match=r"host node-7, pid 4242"):
        main(["--debug", "-o", str(tmp_path), f"data.train={shards}", "run.steps=1", *DEEP])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]

    lock = RunLock(tmp_path / "b")
    lock.acquire()
    with pytest.raises(RunFolderBusy, match=f"host {socket.gethostname()}, pid {os.getpid()}"):
        RunLock(tmp_path / "b").acquire()
    lock.release()
    assert not lock.path.exists()


def test_a_lock_older_than_three_heartbeats_is_taken_over_with_a_warning(tmp_path, caplog):
    path = tmp_path / "run.lock"
    path.write_text(json.dumps({"host": "node-7", "pid": 4242, "started": 0}))
    os.utime(path, (time.time() - 181, time.time() - 181))
    lock = RunLock(tmp_path, heartbeat_s=60)
    with caplog.at_level(logging.WARNING, logger="tips.train"):
        lock.acquire()
    assert "taking over" in caplog.text and "node-7 pid 4242" in caplog.text
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_of_this_host_whose_process_is_gone_is_taken_over_at_once(tmp_path, caplog):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    (tmp_path / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": 0}))
    lock = RunLock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tips.train"):
        lock.acquire()
    assert f"pid {pid}" in caplog.text
    lock.release()


def test_the_lock_heartbeat_refreshes_its_mtime(tmp_path):
    lock = RunLock(tmp_path, heartbeat_s=0.05)
    lock.acquire()
    os.utime(lock.path, (0, 0))
    deadline = time.time() + 10
    while lock.path.stat().st_mtime == 0 and time.time() < deadline:
        time.sleep(0.01)
    assert lock.path.stat().st_mtime > 0
    lock.release()


def test_an_earlier_run_is_refused_without_resume_and_replaced_with_force(shards, run4, tmp_path):
    out = copy_run(run4, tmp_path / "run")
    (out / "checkpoints" / ".step-00000006.tmp-1").mkdir()  # a killed save's temporary
    args = ["-o", str(out), f"data.train={shards}", "run.steps=1", *DEEP]
    with pytest.raises(FileExistsError, match=r"run\.resume=latest.*--force"):
        main(["--debug", *args])  # the exception itself, not its one-line message
    assert checkpointing.latest_checkpoint(out).name == "step-00000004"
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    assert main(["--force", *args]) == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]
    assert (out / "final").is_dir() and not (out / "run.lock").exists()


# --------------------------------------------------------------------------- damage and full disks
def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


DAMAGE = {
    "truncated_export_safetensors": lambda c: _truncate(c / "export" / "model.safetensors"),
    "truncated_shard": lambda c: _truncate(next((c / "state").glob("*.safetensors"))),
    "empty_trainer_json": lambda c: (c / "trainer.json").write_text(""),
    "empty_object_trainer_json": lambda c: (c / "trainer.json").write_text("{}"),
    "missing_shard": lambda c: next((c / "state").glob("*.safetensors")).unlink(),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_latest_checkpoint_is_skipped_with_a_warning_naming_it(run4, tmp_path, caplog, damage):
    out = copy_run(run4, tmp_path / "run")
    DAMAGE[damage](out / "checkpoints" / "step-00000004")
    checkpointer = Checkpointer(out, types.SimpleNamespace(is_main_process=True), keep_last=2)
    with caplog.at_level(logging.WARNING, logger="tips.train"):
        assert checkpointer.resume_path("latest") == out / "checkpoints" / "step-00000002"
    assert "skipping the damaged checkpoint" in caplog.text and "step-00000004" in caplog.text
    with pytest.raises(ValueError, match="step-00000004"):
        checkpointer.resume_path(str(out / "checkpoints" / "step-00000004"))


def test_resume_latest_continues_from_the_previous_checkpoint_when_the_newest_is_damaged(shards, run4, tmp_path):
    out = copy_run(run4, tmp_path / "run")
    _truncate(next((out / "checkpoints" / "step-00000004" / "state").glob("*.safetensors")))
    trainer = make_trainer(shards, out, "run.resume=latest")
    trainer.start()
    assert trainer.step == 2 and trainer.resumed_from.name == "step-00000002"
    trainer.close()


def test_a_full_disk_during_a_save_is_reported_as_one_and_leaves_no_temporary(shards, tmp_path, monkeypatch):
    import safetensors.torch

    import tips.formats.pretrained

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    trainer = make_trainer(shards, tmp_path, steps=1)
    trainer.start()
    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save", no_space)
        with pytest.raises(DiskFullError, match=r"disk full: no space left on the device of .*checkpoints"):
            trainer.save()
    assert list((tmp_path / "checkpoints").iterdir()) == []
    with monkeypatch.context() as m:
        m.setattr(tips.formats.pretrained, "save_file", no_space)
        with pytest.raises(DiskFullError, match=r"disk full: .*final"):
            trainer.finish()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    trainer.close()
