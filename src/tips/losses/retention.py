"""The dense retention guard's loss: keep fine-tuned patch features close to the original model's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

RETENTION_KINDS = ("cosine", "smooth_l1")


def retention_loss(student: torch.Tensor, original: torch.Tensor, kind: str = "cosine",
                   keep: torch.Tensor | None = None) -> torch.Tensor:
    """Distance between L2-normalised patch tokens, averaged over the kept patches.

    student, original: (B, N, D) patch tokens of the same images (``original`` carries no gradient);
    keep: (B, N) bool, the patches to compare (None: all; e.g. the unmasked ones of a masked pass).
    ``cosine``: 1 − cos; ``smooth_l1``: smooth-L1 summed over D between the unit vectors. Returns a scalar.
    """
    if student.shape != original.shape:
        raise ValueError(f"retention: student tokens {tuple(student.shape)} and original {tuple(original.shape)} differ")
    s, o = F.normalize(student.float(), dim=-1), F.normalize(original.float(), dim=-1)
    if kind == "cosine":
        per_patch = 1.0 - (s * o).sum(-1)  # (B, N)
    elif kind == "smooth_l1":
        per_patch = F.smooth_l1_loss(s, o, reduction="none", beta=0.1).sum(-1)
    else:
        raise ValueError(f"finetune.retention_loss={kind!r}: expected one of {RETENTION_KINDS}")
    if keep is None:
        return per_patch.mean()
    w = keep.to(per_patch.dtype)
    return (per_patch * w).sum() / w.sum().clamp_min(1.0)
