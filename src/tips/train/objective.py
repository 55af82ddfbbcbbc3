"""The TIPS objective: (student outputs, teacher targets, batch) → named loss terms and their weighted sum.

L = w_alt·L_contrastive(CLS1, alt-text) + w_syn·L_contrastive(CLS2, synthetic caption)
  + w_distill·L_distill(local-crop CLS1) + w_mask·L_mask(masked patches) [+ w_spread·L_spread(embeddings)]
with the paper's weights 0.5, 0.5, 1, 2 by default (the spread-out regulariser is off). Which terms run, and in which form (DINO / iBOT prototype
losses, pixel reconstruction, feature distillation), is the run's :class:`TrainPlan`; terms that are off are
neither computed nor reported.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.batch import Batch
from ..losses import (
    ContrastiveLoss, DINOLoss, FeatureDistillLoss, IBOTPatchLoss, MatryoshkaContrastiveLoss, PixelReconstructionLoss,
    SigmoidBias, build_spread_loss,
)  # fmt: skip
from .config import LossSection
from .plan import TrainPlan
from .student import StudentOutputs, TeacherTargets


class TIPSObjective(nn.Module):
    """Owns the loss modules the plan uses (and their state: centres, SigLIP biases)."""

    def __init__(self, cfg: LossSection, plan: TrainPlan, patch_size: int) -> None:
        super().__init__()
        self.cfg, self.plan = cfg, plan
        self.contrastive = ContrastiveLoss(cfg.contrastive)
        self.matryoshka = (MatryoshkaContrastiveLoss(self.contrastive, plan.matryoshka_dims, cfg.matryoshka_weights)
                           if plan.matryoshka_dims else None)
        self.spread = build_spread_loss(plan.spread)
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
        for term, image, text, scale, bias in (
            ("alt", out.cls_alt, out.text_alt, model.logit_scale_alt, self.bias_alt),
            ("syn", out.cls_syn, out.text_syn, model.logit_scale_syn, self.bias_syn),
        ):  # fmt: skip
            if getattr(plan, f"contrastive_{term}"):
                losses[f"contrastive_{term}"] = self._contrastive(term, image, text, scale, bias, losses)
        if self.spread is not None:
            losses["spread"] = self._spread(out, losses)
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


    def _contrastive(self, term: str, image, text, scale, bias, logged: dict[str, torch.Tensor]) -> torch.Tensor:
        """The contrastive loss of one CLS ↔ caption pair; with Matryoshka widths, their weighted mean (each width
        logged as ``matryoshka/<term>@<d>``)."""
        if self.matryoshka is None:
            return self.contrastive(image, text, scale, _bias(bias))
        loss, per_width = self.matryoshka(image, text, scale, _bias(bias))
        logged.update({f"matryoshka/{term}@{k.split('@')[1]}": v for k, v in per_width.items()})
        return loss

    def _spread(self, out: StudentOutputs, logged: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the regulariser over the embeddings it spreads (each term's CLS and / or caption embedding);
        its statistics are logged as ``spread/<embedding>_<stat>``."""
        plan = self.plan
        chosen = []
        for term, image, text in (("alt", out.cls_alt, out.text_alt), ("syn", out.cls_syn, out.text_syn)):
            if getattr(plan, f"contrastive_{term}"):
                chosen += [(f"cls_{term}", image)] if "image" in plan.spread_on else []
                chosen += [(f"text_{term}", text)] if "text" in plan.spread_on else []
        total = 0.0
        for name, x in chosen:
            loss, stats = self.spread(x)
            logged.update({f"spread/{name}_{k}": v for k, v in stats.items()})
            total = total + loss
        return total / len(chosen)


def _bias(module: nn.Module | None) -> torch.Tensor | None:
    return None if module is None else module.bias
