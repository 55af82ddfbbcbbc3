"""One checkpoint format for every parallelism, read back without running anything the folder holds.

Tensors go through ``torch.distributed.checkpoint`` (DCP) with safetensors storage
(``HuggingFaceStorageWriter(save_distributed=True)``): every rank writes the chunks it owns (its FSDP shards, or
its share of the replicated tensors under DDP) with their global offsets in the safetensors header, and the reader
rebuilds DCP's metadata from those headers, so a checkpoint written by N processes loads on M and no ``.metadata``
pickle exists. Everything else (step, data positions, seed, counters, optimiser hyper-parameters) is JSON in
``trainer.json``. No random-generator state is saved: every micro-batch reseeds from (seed, step, micro-batch,
rank) (:func:`micro_batch_seed`). The folder layout and its verification: :mod:`tips.train.checkpointing`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..io.atomic import write_json_atomic
from ..data.sources import derive_seed
from . import checkpointing as layout

log = logging.getLogger("tips.train")
_STEP_SEED = 7  # the purpose of the seed, so that no data-pipeline stream shares it


class DiskFullError(OSError):
    """A save ran out of space; its temporary folder is already removed."""


def micro_batch_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """The global generator's seed for one micro-batch: stochastic depth and dropout draw the same numbers in a
    resumed run as in the uninterrupted one, whatever else consumed random numbers before."""
    return derive_seed(seed, _STEP_SEED, step, micro, rank)


class TensorState:
    """The flat ``{name: tensor}`` a checkpoint holds for (module, optimizer, teacher), and the JSON rest.

    Names: ``model.<fqn>``, ``optimizer.state.<param fqn>.<key>`` and ``teacher.<fqn>``; the tensors are the live
    ones (DTensors under FSDP), so DCP loads into them in place.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer | None, teacher: nn.Module | None) -> None:
        self.module, self.optimizer = module, optimizer
        self.model = get_model_state_dict(module)
        self.tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in self.model.items()}
        self.teacher = teacher.trainable_state(sharded=True) if teacher is not None else {}
        self.tensors.update({f"teacher.{k}": v for k, v in self.teacher.items()})
        self.optim: dict[str, Any] = {"state": {}, "param_groups": []}
        self.values: dict[str, dict[str, Any]] = {}  # non-tensor optimiser state entries, by parameter
        self.index: dict[str, tuple[str, str]] = {}  # flat name → (param fqn, key)
        if optimizer is not None:
            self.optim = get_optimizer_state_dict(module, optimizer)  # initialises an empty state (a resume)
            for fqn, entries in self.optim["state"].items():
                for key, value in entries.items():
                    if isinstance(value, torch.Tensor):
                        self.tensors[f"optimizer.state.{fqn}.{key}"] = value
                        self.index[f"optimizer.state.{fqn}.{key}"] = (fqn, key)
                    else:
                        self.values.setdefault(fqn, {})[key] = value

    def json(self) -> dict[str, Any]:
        groups = [{k: _to_json(v, f"optimizer param_groups[{i}].{k}") for k, v in g.items()}
                  for i, g in enumerate(self.optim["param_groups"])]
        values = {fqn: {k: _to_json(v, f"optimizer state {fqn}.{k}") for k, v in entries.items()}
                  for fqn, entries in self.values.items()}
        return {"param_groups": groups, "values": values}

    def load_optimizer(self, saved: dict[str, Any], loaded: set[str]) -> None:
        """Put the loaded tensors (names in ``loaded``) and the JSON rest back into the optimiser; parameters the
        checkpoint has no state for (no gradient yet) get none."""
        # in the live optimiser's order of parameters and keys: torch's full-state-dict gather pairs ranks' entries
        # by position, so an order that differs between ranks (a set's) would swap exp_avg and exp_avg_sq shards
        state: dict[str, dict[str, Any]] = {}
        for name, (fqn, key) in self.index.items():
            if name in loaded:
                state.setdefault(fqn, {})[key] = self.tensors[name]
        for fqn, values in saved["values"].items():
            state.setdefault(fqn, {}).update({k: _from_json(v) for k, v in values.items()})
        live = self.optim["param_groups"]
        if len(saved["param_groups"]) != len(live):
            raise ValueError(f"the checkpoint's optimiser has {len(saved['param_groups'])} parameter groups, this "
                             f"run's {len(live)}: resume with the same optim.* settings")
        groups = [{k: (tuple(v) if isinstance(mine.get(k), tuple) else _from_json(v)) for k, v in g.items()}
                  for g, mine in zip(saved["param_groups"], live)]
        set_optimizer_state_dict(self.module, self.optimizer, {"state": state, "param_groups": groups})


def _to_json(value: Any, where: str) -> Any:
    """An optimiser value as JSON: numbers, strings, None, lists and dtypes (as ``{"dtype": name}``)."""
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, (list, tuple)):
        return [_to_json(v, where) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{where} is a {type(value).__name__}, which a checkpoint cannot hold as JSON")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"dtype"}:
        dtype = getattr(torch, value["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"trainer.json names an unknown dtype {value['dtype']!r}")
        return dtype
    return [_from_json(v) for v in value] if isinstance(value, list) else value


class Checkpointer:
    """Saves and restores a run's state in ``<output_dir>/checkpoints`` (call every method on every rank)."""

    def __init__(self, output_dir: Path, accelerator, keep_last: int) -> None:
        self.output_dir, self.accelerator, self.keep_last = Path(output_dir), accelerator, keep_last

    # ------------------------------------------------------------------ save
    def save(self, step: int, module: nn.Module, optimizer: torch.optim.Optimizer, teacher: nn.Module | None,
             trainer_state: dict[str, Any], export: Callable[[Path], None]) -> Path:
        """Write step ``step`` atomically (tensors, then ``export(folder)``, then ``trainer.json``), then prune.
        A failed save removes its temporary folder; a full disk is reported as :class:`DiskFullError`."""
        acc = self.accelerator
        tmp = self._shared_temporary(step)
        try:
            # an optimiser without state (every step so far skipped) is saved as such, not initialised
            state = TensorState(module, optimizer if optimizer.state else None, teacher)
            with _single_process_is_intended():
                dcp.save(state.tensors,
                         storage_writer=HuggingFaceStorageWriter(str(tmp / "state"), save_distributed=True))
            export(tmp)
            acc.wait_for_everyone()  # every rank's files are complete before they are listed
            if acc.is_main_process:
                write_json_atomic(tmp / "trainer.json", {
                    "format": layout.FORMAT, "version": layout.VERSION, **trainer_state,
                    "optimizer": state.json(), "tensors": sorted(state.tensors), "files": layout.file_sizes(tmp),
                }, indent=2)  # fmt: skip
                layout.finalize(tmp, self.output_dir, step, self.keep_last)
        except BaseException as e:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            full = _disk_full(e)
            if full is not None:
                raise DiskFullError(errno.ENOSPC, f"disk full: no space left on the device of {tmp} while saving "
                                    f"step {step}; free space there (or lower run.keep_last) and resume with "
                                    "run.resume=latest") from e
            raise
        acc.wait_for_everyone()
        return layout.checkpoint_root(self.output_dir) / layout.step_dir_name(step)

    def _shared_temporary(self, step: int) -> Path:
        """The main process's temporary folder, its name sent to every rank."""
        acc = self.accelerator
        name = [str(layout.temporary_dir(self.output_dir, step)) if acc.is_main_process else None]
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(name)
        return Path(name[0])

    # ------------------------------------------------------------------ resume
    def resume_path(self, resume: str | None) -> Path | None:
        """``None`` → start fresh; ``"latest"`` → the newest intact checkpoint (a damaged newer one is skipped
        with a warning naming it), or fresh if there is none; else that folder, which must be intact."""
        if not resume:
            return None
        if resume != "latest":
            path = Path(resume)
            problem = layout.verify(path) if (path / "trainer.json").is_file() else f"{path} has no trainer.json"
            if problem:
                raise ValueError(f"run.resume={resume}: {problem}")
            return path
        found = layout.list_checkpoints(self.output_dir)
        damaged = []
        for path in reversed(found):
            problem = layout.verify(path)
            if problem is None:
                return path
            damaged.append(path)
            if self.accelerator.is_main_process:
                log.warning("skipping the damaged checkpoint %s: %s", path, problem)
        if damaged:
            raise RuntimeError(f"run.resume=latest: every checkpoint in {layout.checkpoint_root(self.output_dir)} "
                               "is damaged (see the warnings); start over with --force")
        return None

    def load(self, path: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
             teacher: nn.Module | None) -> dict[str, Any]:
        """Restore module, optimiser and teacher from ``path`` in place (any world size); returns trainer.json."""
        saved_state = layout.read_trainer_json(path)
        saved = set(saved_state["tensors"])
        has_optimizer = any(k.startswith("optimizer.") for k in saved)
        state = TensorState(module, optimizer if has_optimizer else None, teacher)
        if not has_optimizer:
            optimizer.state.clear()
        wanted = {k: v for k, v in state.tensors.items() if not k.startswith("optimizer.") or k in saved}
        missing = sorted(k for k in wanted if k not in saved)
        unexpected = sorted(k for k in saved if k not in state.tensors)
        if missing or unexpected:
            raise KeyError(f"{path / 'state'} does not fit this run: missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]}; resume with the model, loss and teacher settings that wrote it")
        with _single_process_is_intended():
            dcp.load(wanted, storage_reader=HuggingFaceStorageReader(str(path / "state")))
        set_model_state_dict(module, state.model)
        if has_optimizer:
            state.load_optimizer(saved_state["optimizer"], {k for k in wanted if k.startswith("optimizer.")})
        if state.teacher:
            teacher.load_state_dict(state.teacher, strict=False)
        return saved_state


def resumed_position(positions: list[int], saved_batch_size: int, batch_size: int, world_size: int,
                     rank: int) -> int:
    """This rank's start batch. Same world size: its own saved position (the exact same stream). Otherwise the
    same global number of samples, split evenly: every rank starts at samples_seen / (batch_size · world)."""
    if len(positions) == world_size and saved_batch_size == batch_size:
        return positions[rank]
    samples = sum(positions) * saved_batch_size
    return samples // (batch_size * world_size)


def read_tensors(path: Path, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The whole tensors named ``prefix*`` of the checkpoint at ``path`` (prefix removed), assembled on the CPU
    from every rank's chunks: what a test or a tool compares, without a process group."""
    from safetensors import safe_open

    pieces: dict[str, list[tuple[list[int], torch.Tensor]]] = {}
    for file in sorted((path / "state").glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            offsets = json.loads((f.metadata() or {}).get("DCP_SHARDING_INFO", "{}"))
            for key in f.keys():
                if key.startswith(prefix):
                    offset = offsets.get(key, {}).get("saved_offsets", [])
                    pieces.setdefault(key[len(prefix):], []).append((offset, f.get_tensor(key)))
    out = {}
    for name, chunks in pieces.items():
        shape = [max(o[d] + t.shape[d] if o else t.shape[d] for o, t in chunks) for d in range(chunks[0][1].ndim)]
        whole = torch.empty(shape, dtype=chunks[0][1].dtype)
        for offset, t in chunks:
            whole[tuple(slice(o, o + n) for o, n in zip(offset or [0] * t.ndim, t.shape))] = t
        out[name] = whole
    return out


@contextlib.contextmanager
def _single_process_is_intended():
    """DCP warns on every call without a process group; one process without one is what a plain launch is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _disk_full(error: BaseException) -> BaseException | None:
    """The ``ENOSPC`` behind ``error``: its causes, and the per-rank failures DCP wraps in a CheckpointException."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return e
        todo += [e.__cause__, e.__context__]
        for failure in getattr(e, "failures", {}).values():  # {rank: exception or (exception, traceback)}
            todo.append(failure[0] if isinstance(failure, tuple) else failure)
    return None
