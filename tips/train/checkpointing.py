"""Run checkpoints that survive kills: written to a temporary folder, renamed into place, then pruned.

Layout of ``<output_dir>/checkpoints/step-00001000/``:
- ``state/``: ``accelerator.save_state`` (student + objective, optimiser, RNG states). These pickled files
  are only ever read back by the run that wrote them (resume);
  Under ``run.parallel=fsdp`` these are ``dcp/`` (``torch.distributed.checkpoint`` shards of student,
  objective state, optimiser and teacher, reshardable to another world size) and ``rng/`` instead
  (:mod:`tips.train.sharded_state`, docs/scaling.md);
- ``teacher.safetensors``: the EMA teacher (or its heads; DDP only, it is in ``dcp/`` under FSDP);
- ``trainer.json``: step, samples seen, data position per rank, skip counters, non-finite count;
- ``export/``: a ``save_pretrained`` folder of the student towers (what users load); ``export_teacher/``
  holds the EMA teacher's image tower when asked.
accelerate's own ``total_limit`` deletes old checkpoints *before* writing the new one; here pruning happens
only after the new folder is complete.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..io.atomic import replace_dir

STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / "trainer.json").is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def temporary_dir(output_dir: str | Path, step: int) -> Path:
    """A fresh temporary folder beside the final one (same file system, so the rename is atomic)."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{step_dir_name(step)}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def remove_stale_temporaries(output_dir: str | Path) -> list[Path]:
    """Delete temporary folders left by a save that was killed (they were never renamed into place)."""
    root = checkpoint_root(output_dir)
    stale = [p for p in root.glob(".step-*") if p.is_dir()] if root.is_dir() else []
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


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """``None`` → start fresh; ``"latest"`` → newest complete checkpoint (or fresh if none); else a folder."""
    if not resume:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / "trainer.json").is_file():
        raise FileNotFoundError(f"run.resume={resume}: not a complete checkpoint folder (no trainer.json)")
    return path
