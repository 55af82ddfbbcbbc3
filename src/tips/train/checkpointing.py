"""The run folder's checkpoint layout: step folders built as temporaries, renamed into place, verified, pruned.

``<output_dir>/checkpoints/step-00001000/`` (written by :class:`tips.train.checkpointer.Checkpointer`):
- ``state/shard-0000K-model-00001-of-00001.safetensors``: the tensors rank K-1 wrote (``model.*`` student and
  objective, ``optimizer.state.*``, ``teacher.*``), each chunk with its global offsets in the header, so any world
  size reads them back (``torch.distributed.checkpoint`` with safetensors storage; nothing is pickled);
- ``export/``: a ``save_pretrained`` folder of the student towers (what users load); ``export_teacher/`` holds the
  EMA teacher's image tower when asked;
- ``trainer.json``, written last: step, data positions, seed, counters, the optimiser's hyper-parameters, the
  tensor names and every file with its size (what :func:`verify` checks).

A save is built in ``.step-00001000.tmp-<pid>`` beside its final name and renamed into place; older checkpoints
are pruned only after the new folder is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..io.atomic import replace_dir

STEP_DIR = re.compile(r"^step-(\d{8})$")
FORMAT = "tips-train-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "step", "world_size", "data_positions", "tensors", "files")
# What a run leaves that a crash can orphan: checkpoint temporaries and save_pretrained's temporary folders.
TEMPORARIES = ("checkpoints/.step-*.tmp*", ".final.tmp-*", ".final_teacher.tmp-*")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoints renamed into place, oldest first (temporaries of an interrupted save are ignored). Renamed
    means complete when written; :func:`verify` says whether they are still intact."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / "trainer.json").is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def temporary_dir(output_dir: str | Path, step: int) -> Path:
    """A fresh temporary folder of this process beside the final one (same file system: the rename is atomic)."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{step_dir_name(step)}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def remove_temporaries(output_dir: str | Path) -> list[Path]:
    """Delete what interrupted saves left (never renamed into place). Only the holder of the folder's
    :class:`~tips.train.run_lock.RunLock` calls this: no live writer can own them."""
    stale = [p for pattern in TEMPORARIES for p in Path(output_dir).glob(pattern) if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def finalize(tmp: Path, output_dir: str | Path, step: int, keep_last: int) -> Path:
    """Rename the complete temporary folder into place, then delete all but the newest ``keep_last``."""
    final = checkpoint_root(output_dir) / step_dir_name(step)
    replace_dir(tmp, final)  # a re-run of the same step replaces the old folder only once the new one is complete
    for stale in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def file_sizes(folder: Path) -> dict[str, int]:
    """Every file below ``folder`` (relative POSIX path → bytes), except ``trainer.json`` which lists them."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "trainer.json"}


def read_trainer_json(path: Path) -> dict:
    """``path/trainer.json`` of a checkpoint, checked for the keys resume needs (ValueError naming the file)."""
    file = path / "trainer.json"
    try:
        state = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{file} is unreadable ({e})") from e
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
        raise ValueError(f"{file} lacks {missing}")
    if state["format"] != FORMAT or state["version"] != VERSION:
        raise ValueError(f"{file} is {state['format']} version {state['version']}, not {FORMAT} version {VERSION}: "
                         "resume it with the tips release that wrote it")
    return state


def verify(path: Path) -> str | None:
    """None when the checkpoint at ``path`` is intact, else what is wrong: ``trainer.json`` valid, every file it
    lists present at its size, every safetensors header and JSON file readable, no unlisted tensor file, and
    every tensor name it lists found in a header."""
    from safetensors import safe_open

    try:
        state = read_trainer_json(path)
    except ValueError as e:
        return str(e)
    files: dict[str, int] = state["files"]
    keys: set[str] = set()
    for rel, size in files.items():
        file = path / rel
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != size:
            return f"{file} has {file.stat().st_size} bytes, {size} were written (truncated or replaced)"
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt") as f:
                    if rel.startswith("state/"):
                        keys.update(f.keys())
            elif file.suffix == ".json":
                json.loads(file.read_text())
        except Exception as e:  # safetensors raises its own error types for a bad header
            return f"{file} is unreadable ({type(e).__name__}: {e})"
    unlisted = sorted(p.name for p in (path / "state").iterdir() if f"state/{p.name}" not in files) \
        if (path / "state").is_dir() else []
    if unlisted:
        return f"{path / 'state'} holds files its trainer.json does not list: {unlisted[:3]}"
    absent = [k for k in state["tensors"] if k not in keys]
    if absent:
        return f"{path / 'state'} lacks tensors {absent[:3]}"
    return None
