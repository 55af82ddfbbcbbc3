"""Feature distillation from released weights that carry no heads: a cosine loss between a learned student
projection and the frozen teacher's CLS1 and patch tokens (all patches, no mask)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import fp32_region


class FeatureDistillLoss(nn.Module):
    """mean(1 − cos(student, teacher)) over every token; the teacher side gets no gradient."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """student (…, D_t) already projected to the teacher width, teacher (…, D_t) → scalar fp32."""
        if student.shape != teacher.shape:
            raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ")
        with fp32_region(student):
            cos = F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1)
            return (1.0 - cos).mean()
