"""The TIPS objective: (student, teacher, batch) → named loss terms and their weighted sum.

L = w_alt·L_contrastive(CLS1, alt-text) + w_syn·L_contrastive(CLS2, synthetic caption)
  + w_distill·L_DINO(local-crop CLS1 vs teacher global CLS1) + w_mask·L_iBOT(masked patches)
with the paper's weights 0.5, 0.5, 1, 2 by default (spec §5.2). A zero weight skips that term's compute
where possible (the CLIP-only ablation runs no teacher at all).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.batch import Batch
from ..losses import ContrastiveLoss, DINOLoss, FeatureDistillLoss, IBOTPatchLoss, PixelReconstructionLoss
from .config import LossSection
from .student import TIPSStudent, TIPSTeacher


class TIPSObjective(nn.Module):
    """Owns the loss modules (and their state: centres, SigLIP biases)."""

    def __init__(self, cfg: LossSection, patch_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.contrastive = ContrastiveLoss(cfg.contrastive)
        self.dino = DINOLoss(cfg.dino_k, cfg.student_temp, cfg.center_momentum, cfg.centering, cfg.distill_reduction,
                             cfg.center_init)
        self.ibot = IBOTPatchLoss(cfg.ibot_k, cfg.student_temp, cfg.center_momentum, cfg.centering, cfg.center_init)
        self.pixels = PixelReconstructionLoss(patch_size) if cfg.mim_target == "pixels" else None
        self.feature = FeatureDistillLoss()
        if cfg.contrastive == "sigmoid":
            from ..losses import SigmoidBias

            self.bias_alt = SigmoidBias()
            self.bias_syn = SigmoidBias() if cfg.weights.contrastive_syn > 0 else None
        else:
            self.bias_alt = self.bias_syn = None

    @property
    def needs_teacher(self) -> bool:
        w = self.cfg.weights
        return w.distill > 0 or (w.mask > 0 and self.cfg.mim_target == "features")

    def forward(
        self, student: nn.Module, teacher: TIPSTeacher | None, batch: Batch, teacher_temp: float,
        with_stats: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Returns {'contrastive_alt', 'contrastive_syn', 'distill', 'mask', 'loss'} (scalars, fp32).

        In training with ``with_stats`` (the steps the trainer logs; the same on every rank), for each of the DINO
        and iBOT terms that ran, also 'teacher/<term>_entropy' and
        'teacher/<term>_usage' (term: distill, mask): the mean entropy of the teacher's targets and the entropy of
        their batch mean (:func:`tips.losses.target_statistics`), for logging; no gradient.
        """
        w = self.cfg.weights
        out = student(
            batch.global_crop, batch.local_crops, batch.patch_mask,
            batch.alt_ids, batch.alt_padding, batch.syn_ids, batch.syn_padding,
        )  # fmt: skip
        core: TIPSStudent = getattr(student, "module", student)
        scales = core.model.logit_scale_alt, core.model.logit_scale_syn
        losses = {"contrastive_alt": self.contrastive(out.cls_alt, out.text_alt, scales[0], _bias(self.bias_alt))}
        zero = losses["contrastive_alt"].new_zeros(())
        losses["contrastive_syn"] = (
            self.contrastive(out.cls_syn, out.text_syn, scales[1], _bias(self.bias_syn))
            if out.text_syn is not None else zero
        )  # fmt: skip
        targets = teacher(batch.global_crop, out.patch_index) if (teacher is not None and self.needs_teacher) else None
        if targets is not None and targets.cls is not None:  # feature distillation from released weights
            proj = core.feature_proj
            local_targets = targets.cls.repeat_interleave(batch.local_crops.shape[1], dim=0)
            losses["distill"] = self.feature(proj["cls"](out.local_cls), local_targets)
            losses["mask"] = self.feature(proj["patch"](out.masked_patches), targets.patches)
        else:
            prototype_terms = []  # terms whose targets came from a TeacherCentering
            losses["distill"] = zero
            if targets is not None and w.distill > 0:
                losses["distill"] = self.dino(out.dino_logits, targets.dino_logits, teacher_temp, with_stats)
                prototype_terms.append(("distill", self.dino))
            losses["mask"] = zero
            if w.mask > 0 and self.pixels is not None:
                losses["mask"] = self.pixels(out.pixel_pred, batch.global_crop, batch.patch_mask)
            elif w.mask > 0 and targets is not None:
                losses["mask"] = self.ibot(out.ibot_logits, targets.ibot_logits, out.patch_weights, teacher_temp,
                                           with_stats)
                prototype_terms.append(("mask", self.ibot))
            if self.training and with_stats:
                for term, module in prototype_terms:
                    entropy, usage = module.target_stats.clone()
                    losses[f"teacher/{term}_entropy"], losses[f"teacher/{term}_usage"] = entropy, usage
        losses["loss"] = (
            w.contrastive_alt * losses["contrastive_alt"] + w.contrastive_syn * losses["contrastive_syn"]
            + w.distill * losses["distill"] + w.mask * losses["mask"]
        )  # fmt: skip
        return losses


def _bias(module: nn.Module | None) -> torch.Tensor | None:
    return None if module is None else module.bias
