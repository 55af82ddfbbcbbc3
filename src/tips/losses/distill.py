"""DINO self-distillation on the CLS token: the student's local-crop CLS1 learns the teacher's global-crop target.

Teacher targets come from one of two normalisations, a one-word switch (``centering``):
- ``"ema"``: softmax((h_t − c)/τ_t) with a centre c kept as an EMA of the teacher logits;
- ``"sinkhorn_knopp"``: three Sinkhorn–Knopp iterations over the global batch, no centre.
Targets, log-softmaxes and the centre are fp32 whatever the autocast state.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ._common import all_reduce_, fp32_region, global_mean

CENTERINGS = ("ema", "sinkhorn_knopp")
REDUCTIONS = ("mean", "sum")


def centered_softmax(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """softmax((h_t − c)/τ_t) over the last dim, fp32: (…, K) logits, (1, K) centre → (…, K) targets."""
    with fp32_region(teacher_logits):
        return F.softmax((teacher_logits.float() - center.float()) / temp, dim=-1)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temp: float, n_iters: int = 3) -> torch.Tensor:
    """Sinkhorn–Knopp targets (T, K) for teacher logits (T, K), global over ranks, fp32.

    Q = exp(h/τ)ᵀ (K × T_total) is alternately rescaled so every prototype (row) holds mass 1/K and every
    sample (column) 1/T_total; all sums run over the global batch. A final ×T_total makes each sample's target
    sum to 1. Rank-local T may differ (patch counts), and may be 0.
    """
    with fp32_region(teacher_logits):
        logits = teacher_logits.float() / temp  # (T, K)
        num_prototypes = logits.shape[1]
        # A per-prototype shift is cancelled exactly by the first row rescaling, and keeps exp() finite.
        peak = logits.amax(dim=0) if logits.shape[0] else logits.new_full((num_prototypes,), float("-inf"))
        q = torch.exp(logits - all_reduce_(peak, dist.ReduceOp.MAX)).t()  # (K, T)
        total = all_reduce_(q.new_tensor(float(q.shape[1])))
        tiny = torch.finfo(q.dtype).tiny
        q = q / all_reduce_(q.sum()).clamp_min(tiny)
        for _ in range(n_iters):
            q = q / all_reduce_(q.sum(dim=1, keepdim=True)).clamp_min(tiny) / num_prototypes
            q = q / q.sum(dim=0, keepdim=True).clamp_min(tiny) / total
        return (q * total).t()


def target_statistics(targets: torch.Tensor) -> torch.Tensor:
    """(2,) fp32 over every rank's rows of targets (T, K): their mean entropy and the entropy of their mean, nats.

    The mean entropy is what the cross-entropy loss would be for a perfect student, so the loss minus it is the
    mean KL(teacher ‖ student): a loss near log K with an entropy near log K means uniform, uninformative targets
    rather than a student that cannot follow sharp ones. The entropy of the mean target measures prototype use over
    the batch: 0 when every row picks the same prototype (collapse), log K when all are used alike. Both are 0 when
    no rank has a row.
    """
    p = targets.detach().float()
    tiny = torch.finfo(p.dtype).tiny
    row_entropy = -(p * p.clamp_min(tiny).log()).sum(dim=-1, keepdim=True)  # (T, 1)
    mean, _ = global_mean(torch.cat([p, row_entropy], dim=-1))  # one all-reduce: (1, K + 1)
    usage = mean[0, :-1]
    return torch.stack([mean[0, -1], -(usage * usage.clamp_min(tiny).log()).sum()])


class TeacherCentering(nn.Module):
    """Owns a (1, K) ``center`` buffer and turns teacher logits into targets (centering or Sinkhorn–Knopp).

    The centre is a buffer so it is saved and restored with the module state. ``compute(..., with_stats=True)``
    also returns :func:`target_statistics` of the targets (in training; every rank must pass the same
    ``with_stats``: the statistics take one all-reduce).

    center_init: ``"first_batch"`` (default) sets the centre to the mean of the first teacher batch before
    that batch's targets are made; ``"zeros"`` is DINO's init. With zeros, first-step targets all pile onto
    whichever prototype the randomly initialised teacher favours for every image (the batch-common part of
    the logits that centering exists to remove), and the student's first updates chase that collapse.
    """

    def __init__(
        self, out_dim: int, center_momentum: float = 0.9, centering: str = "ema", center_init: str = "first_batch"
    ) -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        if center_init not in ("first_batch", "zeros"):
            raise ValueError(f"center_init must be 'first_batch' or 'zeros', got {center_init!r}")
        self.centering = centering
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center_ready", torch.tensor(center_init == "zeros"))
        self._ready_on_host = False  # once the centre is set, reading ``center_ready`` (a host sync) stops
        self.register_load_state_dict_pre_hook(self._forget_host_flag)

    def _forget_host_flag(self, *args, **kwargs) -> None:
        self._ready_on_host = False  # a loaded state may hold an unset centre

    @torch.no_grad()
    def teacher_probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Targets (T, K) from teacher logits (T, K) with the current centre; no gradient."""
        teacher_logits = teacher_logits.detach()
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, teacher_temp)
        if self.training and not self._ready_on_host:
            self._ready_on_host = bool(self.center_ready)
            if not self._ready_on_host:  # first batch: the centre starts at its mean
                batch_center, count = global_mean(teacher_logits)
                if bool(count > 0) and bool(torch.isfinite(batch_center).all()):
                    self.center.copy_(batch_center)
                    self.center_ready.fill_(True)
                    self._ready_on_host = True
        return centered_softmax(teacher_logits, self.center, teacher_temp)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """c ← m·c + (1 − m)·mean(h_t), the mean over every rank's rows of teacher_logits (T, K).

        A no-op outside training, under Sinkhorn–Knopp, when no rank has a row, or when the teacher's output is
        not finite (the step is skipped; a NaN centre would poison every later target).
        """
        if not self.training or self.centering != "ema":
            return
        batch_center, count = global_mean(teacher_logits)
        m = self.center_momentum
        updated = m * self.center.float() + (1 - m) * batch_center
        keep_old = (count == 0) | ~torch.isfinite(batch_center).all()
        self.center.copy_(torch.where(keep_old, self.center.float(), updated))


def cross_entropy_to_targets(student_logits: torch.Tensor, targets: torch.Tensor, temp: float) -> torch.Tensor:
    """−Σ_k p_t[k]·log softmax(h_s/τ_s)[k] over the last dim: (…, K), (…, K) → (…), fp32."""
    with fp32_region(student_logits):
        log_q = F.log_softmax(student_logits.float() / temp, dim=-1)
        return -(targets.float() * log_q).sum(dim=-1)


class DINOLoss(TeacherCentering):
    """L_distill: student local-crop CLS logits against the teacher's global-crop CLS targets (Eq. 1)."""

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: str = "ema",
        reduction: str = "mean",
        center_init: str = "first_batch",
    ) -> None:
        super().__init__(out_dim, center_momentum, centering, center_init)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.student_temp = student_temp
        self.reduction = reduction

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Scalar fp32 loss (see :meth:`compute`)."""
        return self.compute(student_logits, teacher_logits, teacher_temp)[0]

    def compute(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_temp: float, with_stats: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scalar fp32 loss, target statistics (2,) or None); updates the centre afterwards (training, ``"ema"``).

        student_logits: (B, M, K) DINO-head outputs on the M local crops of each image.
        teacher_logits: (B, K) teacher DINO-head outputs on the global crop; never receives a gradient.
        ``"mean"`` averages over crops and images; ``"sum"`` sums over crops (Eq. 1 literally, M× larger).
        with_stats: in training, also return :func:`target_statistics` (an entropy over the targets, one all-reduce).
        """
        if student_logits.ndim != 3 or teacher_logits.shape != student_logits[:, 0].shape:
            raise ValueError(
                f"expected student (B, M, K) and teacher (B, K), got {tuple(student_logits.shape)} "
                f"and {tuple(teacher_logits.shape)}"
            )
        targets = self.teacher_probs(teacher_logits, teacher_temp)  # (B, K)
        per_crop = cross_entropy_to_targets(student_logits, targets.unsqueeze(1), self.student_temp)  # (B, M)
        loss = per_crop.mean() if self.reduction == "mean" else per_crop.sum(dim=1).mean()
        self.update_center(teacher_logits)
        return loss, target_statistics(targets) if (self.training and with_stats) else None
