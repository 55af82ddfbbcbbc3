"""Checkpoints of ``run.parallel=fsdp`` runs with ``torch.distributed.checkpoint`` (DCP), reshardable on resume.

``dcp/`` holds one ``.distcp`` file per writing rank plus ``.metadata``: the student + objective state
(``model.*``, fully qualified names of the unwrapped module), the optimiser state keyed by parameter name
(``optimizer.*``) and the EMA teacher (``teacher.*``). DCP stores every tensor as global shape + shards, so a
checkpoint written by N ranks loads on M ranks (each rank reads the pieces of its own shards). ``rng/rank-K.json``
holds each rank's random generators (restored only at the same world size). Only this trainer reads these
files; ``export/`` is the ``save_pretrained`` folder other code loads.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from ..io.atomic import write_json_atomic


def _states(module: nn.Module, optimizer: torch.optim.Optimizer, teacher) -> dict:
    model_sd, optim_sd = get_state_dict(module, optimizer)
    states = {"model": model_sd, "optimizer": optim_sd}
    teacher_sd = teacher.trainable_state(sharded=True) if teacher is not None else {}
    if teacher_sd:
        states["teacher"] = teacher_sd
    return states


def save(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer, teacher) -> None:
    """Every rank writes its shards of student, optimiser and teacher to ``folder`` (a collective)."""
    dcp.save(_states(module, optimizer, teacher), checkpoint_id=str(folder))


def load(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer, teacher) -> None:
    """Load ``folder`` (written at any world size) into the sharded module, optimiser and teacher in place."""
    states = _states(module, optimizer, teacher)
    dcp.load(states, checkpoint_id=str(folder))
    set_state_dict(module, optimizer, model_state_dict=states["model"], optim_state_dict=states["optimizer"])
    if "teacher" in states:
        _, unexpected = teacher.load_state_dict(states["teacher"], strict=False)
        if unexpected:
            raise KeyError(f"{folder}: teacher tensors {unexpected[:5]} are not in this run's teacher")


def gathered(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of ``module`` on CPU, on rank 0 only (a collective: every rank calls)."""
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_rng(folder: Path, rank: int) -> None:
    state = {
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": _numpy_state(),
        "python": _python_state(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / f"rank-{rank}.json", state)


def load_rng(folder: Path, rank: int) -> bool:
    """Restore this rank's generators; False when the checkpoint has none for ``rank`` (other world size)."""
    path = folder / f"rank-{rank}.json"
    if not path.is_file():
        return False
    state = json.loads(path.read_text())
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    return True


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def resumed_position(positions: list[int], saved_batch_size: int, batch_size: int, world_size: int,
                     rank: int) -> int:
    """This rank's start batch. Same world size: its own saved position (the exact same stream). Otherwise the
    same global number of samples, split evenly: every rank starts at samples_seen / (batch_size · world)."""
    if len(positions) == world_size and saved_batch_size == batch_size:
        return positions[rank]
    samples = sum(positions) * saved_batch_size
    return samples // (batch_size * world_size)
