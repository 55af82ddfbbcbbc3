"""The TIPS objective: (student outputs, teacher targets, batch) → named loss terms and their weighted sum.

L = w_alt·L_contrastive(CLS1, alt-text) + w_syn·L_contrastive(CLS2, synthetic caption)
  + w_distill·L_distill(local-crop CLS1) + w_mask·L_mask(masked patches)
with the paper's weights 0.5, 0.5, 1, 2 by default. Which terms run, and in which form (DINO / iBOT prototype
losses, pixel reconstruction, feature distillation), is the run's :class:`TrainPlan`; terms that are off are
neither computed nor reported.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.batch import Batch
from ..losses import ContrastiveLoss, DINOLoss, FeatureDistillLoss, IBOTPatchLoss, PixelReconstructionLoss, SigmoidBias
from .config import LossSection
from .plan import TrainPlan
from .student import StudentOutputs, TeacherTargets


class TIPSObjective(nn.Module):
    """Owns the loss modules the plan uses (and their state: centres, SigLIP biases)."""

    def __init__(self, cfg: LossSection, plan: TrainPlan, patch_size: int) -> None:
        super().__init__()
        self.cfg, self.plan = cfg, plan
        self.contrastive = ContrastiveLoss(cfg.contrastive)
        sigmoid = cfg.contrastive == "sigmoid"
        self.bias_alt = SigmoidBias() if sigmoid and plan.contrastive_alt else None
        self.bias_syn = SigmoidBias() if sigmoid and plan.contrastive_syn else None
        self.dino = (DINOLoss(cfg.dino_k, cfg.student_temp, cfg.center_momentum, cfg.centering,
                              cfg.distill_reduction, cfg.center_init) if plan.distill == "dino" else None)
        self.ibot = (IBOTPatchLoss(cfg.ibot_k, cfg.student_temp, cfg.center_momentum, cfg.centering,
                                   cfg.center_init) if plan.mask == "ibot" else None)
        self.pixels = PixelReconstructionLoss(patch_size) if plan.mask == "pixels" else None
        self.feature = FeatureDistillLoss() if plan.feature_targets else None

    def forward(
        self, student: nn.Module, out: StudentOutputs, targets: TeacherTargets | None, batch: Batch,
        teacher_temp: float, with_stats: bool = False,
    ) -> dict[str, torch.Tensor]:
        """{term: scalar fp32 for each term of the plan, 'loss': their weighted sum} as device tensors.

        ``student`` is the unwrapped :class:`TIPSStudent` (temperatures, feature maps). With ``with_stats`` (the
        steps the trainer logs; the same on every rank) also 'teacher/<term>_entropy' and 'teacher/<term>_usage'
        for the prototype terms: the mean entropy of the teacher's targets and the entropy of their batch mean
        (:func:`tips.losses.target_statistics`); no gradient.
        """
        plan, model = self.plan, student.model
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor | None] = {}
        if plan.contrastive_alt:
            losses["contrastive_alt"] = self.contrastive(out.cls_alt, out.text_alt, model.logit_scale_alt,
                                                         _bias(self.bias_alt))
        if plan.contrastive_syn:
            losses["contrastive_syn"] = self.contrastive(out.cls_syn, out.text_syn, model.logit_scale_syn,
                                                         _bias(self.bias_syn))
        if plan.distill == "dino":
            losses["distill"], stats["distill"] = self.dino.compute(out.dino_logits, targets.dino_logits,
                                                                    teacher_temp, with_stats)
        elif plan.distill == "features":
            local_targets = targets.cls.repeat_interleave(batch.local_crops.shape[1], dim=0)  # (B·M, D_t)
            losses["distill"] = self.feature(student.feature_proj["cls"](out.local_cls), local_targets)
        if plan.mask == "ibot":
            losses["mask"], stats["mask"] = self.ibot.compute(out.ibot_logits, targets.ibot_logits,
                                                              out.patch_weights, teacher_temp, with_stats)
        elif plan.mask == "pixels":
            losses["mask"] = self.pixels(out.pixel_pred, batch.global_crop, batch.patch_mask)
        elif plan.mask == "features":
            losses["mask"] = self.feature(student.feature_proj["patch"](out.masked_patches), targets.patches)
        losses["loss"] = sum(w * losses[term] for term, w in plan.weights)
        for term, value in stats.items():
            if value is not None:
                losses[f"teacher/{term}_entropy"], losses[f"teacher/{term}_usage"] = value[0], value[1]
        return losses


def _bias(module: nn.Module | None) -> torch.Tensor | None:
    return None if module is None else module.bias
