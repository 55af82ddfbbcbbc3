"""Image–text contrastive losses: symmetric softmax InfoNCE over the global batch, one learned scale per caption type.

Multi-device form: **local loss + gather with grad**. Each rank scores its own B rows against the columns of
every rank (gathered with an autograd all-gather), labels offset by rank·B. The gather's backward sums each
feature's gradient over ranks and DDP then averages over ranks, so the update is the gradient of the mean of
the per-rank losses, which is the loss on the global batch. Memory is linear in the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ._common import fp32_region, is_distributed, rank_and_world

KINDS = ("softmax", "sigmoid")


def _autograd_all_gather():
    """torch's autograd all-gather along dim 0 (renamed ``all_gather_single_autograd`` in recent releases)."""
    from torch.distributed import _functional_collectives as fc

    return getattr(fc, "all_gather_single_autograd", None) or fc.all_gather_tensor_autograd


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (B, D) from every rank in rank order → (world·B, D); gradients flow back to each rank.

    Every rank must pass the same B. The identity when not distributed.
    """
    if not is_distributed():
        return x
    return _autograd_all_gather()(x.contiguous(), 0, dist.group.WORLD)


class SigmoidBias(nn.Module):
    """The learnable logit bias b of the sigmoid (SigLIP) loss; SigLIP starts it at −10."""

    def __init__(self, init: float = -10.0) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> torch.Tensor:
        """The bias, a scalar tensor."""
        return self.bias


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE (``kind="softmax"``, TIPS default) or pairwise sigmoid (``kind="sigmoid"``).

    rank / world_size: default to ``torch.distributed`` at call time (0 / 1 when not initialised).
    """

    def __init__(self, kind: str = "softmax", rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.rank = rank
        self.world_size = world_size

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of this rank's pairs against the global batch, a scalar in fp32.

        image: (B, D) image embeddings (e.g. CLS1), text: (B, D) paired text embeddings; not yet normalised.
        logit_scale: scalar, log-space (scale s = exp(logit_scale)).
        logit_bias: scalar b, required for ``kind="sigmoid"``, ignored by softmax.
        """
        if image.shape != text.shape or image.ndim != 2:
            raise ValueError(f"image and text must both be (B, D), got {tuple(image.shape)} and {tuple(text.shape)}")
        rank, _ = rank_and_world(self.rank, self.world_size)
        with fp32_region(image):
            image = F.normalize(image.float(), dim=-1)
            text = F.normalize(text.float(), dim=-1)
            scale = logit_scale.float().exp()
            if self.kind == "softmax":
                return self._softmax(image, text, scale, rank)
            if logit_bias is None:
                raise ValueError("kind='sigmoid' needs logit_bias")
            return self._sigmoid(image, text, scale, logit_bias.float(), rank)

    @staticmethod
    def _softmax(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, rank: int) -> torch.Tensor:
        """½[CE(s·ê t̂ᵀ) + CE(s·t̂ êᵀ)] over local rows (B) and global columns (world·B)."""
        batch = image.shape[0]
        all_image = gather_with_grad(image)  # (world·B, D)
        all_text = gather_with_grad(text)  # (world·B, D)
        labels = torch.arange(batch, device=image.device) + rank * batch
        logits_per_image = scale * image @ all_text.t()  # (B, world·B)
        logits_per_text = scale * text @ all_image.t()  # (B, world·B)
        return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))

    @staticmethod
    def _sigmoid(
        image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, rank: int
    ) -> torch.Tensor:
        """−Σ log σ(y·(s·ê t̂ᵀ + b)) / B, y = +1 on true pairs and −1 elsewhere, local images vs all texts.

        Each (image, text) pair of the global batch is scored on exactly one rank (its image's), so the mean
        over ranks is the global SigLIP loss.
        """
        batch = image.shape[0]
        all_text = gather_with_grad(text)  # (world·B, D)
        logits = scale * image @ all_text.t() + bias  # (B, world·B)
        labels = -torch.ones_like(logits)
        rows = torch.arange(batch, device=image.device)
        labels[rows, rows + rank * batch] = 1.0
        return -F.logsigmoid(labels * logits).sum() / batch
