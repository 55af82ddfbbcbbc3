"""Masked image modelling: the iBOT patch loss (student patch tokens of the masked global crop against the
teacher's at the same positions) and the optional MAE-style loss (normalised-pixel MSE on the masked patches).

The trainer picks patches once with :func:`select_patches`, runs the iBOT heads only on those rows of the
flattened (B·N, D) patch tokens, and passes the per-patch weights to :class:`IBOTPatchLoss`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ._common import fp32_region
from .distill import TeacherCentering, cross_entropy_to_targets, target_statistics


def select_patches(patch_mask: torch.Tensor, all_patches: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches that enter the patch loss and their weights.

    patch_mask: (B, N) bool, True = masked. ``all_patches=True`` (TIPSv2 iBOT++) selects every patch.
    Returns flat_index (T,) long into the flattened B·N patches (row-major, image-major) and weights (T,)
    fp32, 1/(n_b·B') for image b with n_b selected patches and B' images with at least one, so that
    Σ_t w_t·ℓ_t is the mean over images of the mean over their selected patches.
    """
    selected = torch.ones_like(patch_mask, dtype=torch.bool) if all_patches else patch_mask.bool()
    num_patches = selected.shape[1]
    counts = selected.sum(dim=1)  # (B,)
    num_images = (counts > 0).sum().clamp_min(1)
    per_image = 1.0 / (counts.clamp_min(1) * num_images).float()  # (B,)
    flat_index = selected.flatten().nonzero().squeeze(1)  # (T,)
    return flat_index, per_image[flat_index // num_patches]


class IBOTPatchLoss(TeacherCentering):
    """L_mask: student patch logits (masked view) against teacher patch targets (unmasked view), same position."""

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: str = "ema",
        center_init: str = "first_batch",
    ) -> None:
        super().__init__(out_dim, center_momentum, centering, center_init)
        self.student_temp = student_temp

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        """Scalar fp32 loss (see :meth:`compute`)."""
        return self.compute(student_logits, teacher_logits, weights, teacher_temp)[0]

    def compute(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        weights: torch.Tensor,
        teacher_temp: float,
        with_stats: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Σ_t w_t·(−Σ_k p_t log q_s) in fp32, target statistics (2,) or None); updates the centre afterwards.

        student_logits, teacher_logits: (T, K) iBOT-head outputs on the selected patches (teacher: no gradient).
        weights: (T,) from :func:`select_patches`. T may be 0 (the loss is then 0).
        with_stats: in training, also return :func:`~tips.losses.target_statistics` of the targets.
        """
        if student_logits.shape != teacher_logits.shape or weights.shape != student_logits.shape[:1]:
            raise ValueError(
                f"expected student and teacher (T, K) and weights (T,), got {tuple(student_logits.shape)}, "
                f"{tuple(teacher_logits.shape)} and {tuple(weights.shape)}"
            )
        targets = self.teacher_probs(teacher_logits, teacher_temp)  # (T, K)
        per_patch = cross_entropy_to_targets(student_logits, targets, self.student_temp)  # (T,)
        loss = (weights.float() * per_patch).sum()
        self.update_center(teacher_logits)
        return loss, target_statistics(targets) if (self.training and with_stats) else None


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, 3, H, W) → (B, N, p·p·3), patches row-major, pixels within a patch in (p, p, 3) order."""
    height, width = images.shape[-2:]
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"image size {(height, width)} is not a multiple of the patch size {p}")
    return rearrange(images, "b c (h ph) (w pw) -> b (h w) (ph pw c)", ph=p, pw=p)


class PixelReconstructionLoss(nn.Module):
    """MAE loss for ``mim_target: pixels``: per-patch MSE to (normalised) pixels, averaged over masked patches."""

    def __init__(self, patch_size: int, norm_pix: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.norm_pix = norm_pix

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, N, p·p·3) fp32, each patch standardised when ``norm_pix``."""
        target = patchify(images.float(), self.patch_size)
        if self.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as MAE
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def forward(self, pred: torch.Tensor, images: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """pred (B, N, p·p·3), images (B, 3, H, W), patch_mask (B, N) bool (True = masked) → scalar fp32.

        0 when no patch is masked.
        """
        with fp32_region(pred):
            per_patch = (pred.float() - self.target(images)).pow(2).mean(dim=-1)  # (B, N)
            mask = patch_mask.float()
            return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
