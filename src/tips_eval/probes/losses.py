"""Depth losses of DINOv2's linear depth probe: scale-invariant log loss (SigLoss) and the multi-scale
gradient loss on log-depth differences. Both take (B, H, W) maps and a (B, H, W) bool mask of valid pixels.
Surface-normal losses (probe3d): the angular loss and its uncertainty-aware variant, on (B, 3|4, H, W) maps."""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-3


class SigLoss(nn.Module):
    """L = sqrt(Var(g) + (1 − λ)·mean(g)²), g = log(d̂ + ε) − log(d + ε) over all valid pixels of the batch.

    λ = 0.85 and the unbiased variance, as DINOv2. During the warm-up only sqrt((1 − λ)·mean(g)²) is used,
    so the head first learns the global scale; the caller says whether the step is a warm-up step.
    """

    def __init__(self, lam: float = 0.85, eps: float = EPS) -> None:
        super().__init__()
        self.lam, self.eps = lam, eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, warm_up: bool = False) -> torch.Tensor:
        g = torch.log(pred[valid] + self.eps) - torch.log(target[valid] + self.eps)
        if g.numel() == 0:
            return pred.sum() * 0.0
        mean_term = (1.0 - self.lam) * g.mean() ** 2
        if warm_up or g.numel() < 2:
            return torch.sqrt(mean_term)
        return torch.sqrt(torch.var(g) + mean_term)


class GradientLoss(nn.Module):
    """Σ over strides s ∈ {1, 2, 4, 6}: (Σ|r(y) − r(y+2)| + Σ|r(x) − r(x+2)|) / (valid pixels at that stride),

    r = log(d̂ + ε) − log(d + ε) on the map subsampled by s, pairs counted only when both pixels are valid.
    Unlike DINOv2's code, which squeezes the batch and so subsamples it along the batch axis, every image is
    subsampled along its own rows and columns.
    """

    def __init__(self, strides: tuple[int, ...] = (1, 2, 4, 6), eps: float = EPS) -> None:
        super().__init__()
        self.strides, self.eps = strides, eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        r = torch.where(valid, torch.log(pred + self.eps) - torch.log(target.clamp_min(0) + self.eps), 0.0)
        loss = pred.sum() * 0.0
        for s in self.strides:
            rs, vs = r[:, ::s, ::s], valid[:, ::s, ::s]
            n = vs.sum()
            if n == 0:
                continue
            dv = (rs[:, :-2] - rs[:, 2:]).abs() * (vs[:, :-2] & vs[:, 2:])
            dh = (rs[:, :, :-2] - rs[:, :, 2:]).abs() * (vs[:, :, :-2] & vs[:, :, 2:])
            loss = loss + (dv.sum() + dh.sum()) / n
        return loss


# ------------------------------------------------------------------ surface normals
COS_LIMIT = 1 - 1e-4  # arccos has an infinite derivative at ±1: clamp the cosine (probe3d)


def angular_error(pred: torch.Tensor, target: torch.Tensor, limit: float = COS_LIMIT) -> torch.Tensor:
    """pred (B, 3, H, W) any length, target (B, 3, H, W) unit → θ (B, H, W) radians; the cosine clamped to ±limit."""
    cos = torch.nn.functional.cosine_similarity(pred, target, dim=1, eps=1e-8)
    return torch.arccos(cos.clamp(-limit, limit))


class AngularLoss(nn.Module):
    """L = mean θ over the valid pixels of the batch, θ = arccos(cos(n̂, n)) (the first three channels of pred)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """pred (B, ≥3, H, W), target (B, 3, H, W), valid (B, H, W) bool → scalar."""
        theta = angular_error(pred[:, :3], target)[valid]
        return theta.mean() if theta.numel() else pred.sum() * 0.0


def concentration(z: torch.Tensor) -> torch.Tensor:
    """κ = ELU(z) + 1.01 > 0 from the raw fourth channel (probe3d / Bae et al.)."""
    return torch.nn.functional.elu(z) + 1.01


class UncertaintyAngularLoss(nn.Module):
    """Bae et al.'s angular-vonMF negative log-likelihood, as probe3d trains normals:

    L = log(1 + e^{−κπ}) − log(1 + κ²) + κ·θ, averaged over valid pixels, with κ = ELU(z) + 1.01 from pred's
    fourth channel and θ the clamped angular error of its first three.
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """pred (B, 4, H, W), target (B, 3, H, W), valid (B, H, W) bool → scalar."""
        if pred.shape[1] != 4:
            raise ValueError(f"the uncertainty-aware loss needs 4 channels (normal + κ), got {pred.shape[1]}")
        theta = angular_error(pred[:, :3], target)[valid]
        if theta.numel() == 0:
            return pred.sum() * 0.0
        kappa = concentration(pred[:, 3])[valid]
        nll = torch.nn.functional.softplus(-kappa * torch.pi) - torch.log1p(kappa * kappa) + kappa * theta
        return nll.mean()
