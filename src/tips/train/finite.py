"""Finite or stopped: a run never writes a checkpoint or an export holding a NaN or an infinity.

A NaN learning rate, a diverging step or a poisoned ``init_from`` makes the weights non-finite while the loss of
the step that did it was finite; every later step is then skipped (its loss is NaN), which cannot undo it. So the
weights themselves are checked (one ``isfinite`` per tensor, one host sync, on every rank) before each save and
before the final export; a failed check stops the run naming the step and the last good checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from ..formats.finite import describe, nonfinite_names

__all__ = ["NonFiniteWeightsError", "describe", "nonfinite_names", "nonfinite_everywhere"]


class NonFiniteWeightsError(RuntimeError):
    """The weights hold NaN or infinite values; nothing of them was saved."""


def nonfinite_everywhere(tensors: Iterable[tuple[str, torch.Tensor]], accelerator) -> tuple[int, list[str]]:
    """(ranks whose tensors are not all finite, this rank's non-finite names). Every rank calls it: under FSDP
    each checks its own shards and one all-reduce tells every rank the verdict."""
    bad = nonfinite_names(tensors)
    count = torch.tensor([float(bool(bad))], device=accelerator.device)
    if accelerator.num_processes > 1:
        count = accelerator.reduce(count, reduction="sum")
    return int(count.item()), bad


def stop_message(step: int, bad: list[str], last_good: Path | None, what: str) -> str:
    """One line: where it happened, which tensors, what survives and what to do."""
    names = describe(bad) if bad else "on another rank"
    kept = (f"the last good checkpoint {last_good} is kept (resume from it with run.resume={last_good} and a lower "
            "optim.lr, or check the data)") if last_good else "no checkpoint was written before it"
    return f"step {step}: {what}: the weights are not finite ({names}); nothing was saved; {kept}"
