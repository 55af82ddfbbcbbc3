"""The dense retention guard: a frozen copy of the original image tower whose patch tokens the fine-tuned
student is pulled towards (``finetune.retention_weight`` × :func:`tips.losses.retention_loss`)."""

from __future__ import annotations

import torch
from torch import nn

from ..losses.retention import retention_loss
from ..models.vision import NUM_PREFIX_TOKENS
from .teacher import make_teacher


class RetentionGuard(nn.Module):
    """Frozen original tower + the loss kind. Held by the train module (so it follows the module's device); its
    parameters never train and the optimiser never sees them."""

    def __init__(self, vision: nn.Module, kind: str = "cosine") -> None:
        super().__init__()
        self.original = make_teacher(vision)  # a deep copy: frozen, eval, no stochastic depth
        self.kind = kind

    def train(self, mode: bool = True) -> "RetentionGuard":
        super().train(mode)
        self.original.eval()  # always the original's deterministic features
        return self

    def forward(self, global_crop: torch.Tensor, student_patches: torch.Tensor,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """global_crop (B, 3, H, W); student_patches (B, N, D) from the student's pass on it → scalar loss."""
        with torch.no_grad():
            original = self.original.forward_features(global_crop)[:, NUM_PREFIX_TOKENS:]  # (B, N, D)
        return retention_loss(student_patches, original, self.kind, keep)
