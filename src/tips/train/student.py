"""The student and teacher networks of a TIPS pretraining run, shaped by the run's :class:`TrainPlan`.

The student is one ``nn.Module`` (so DDP/FSDP wrap it whole): the TIPS towers, the DINO (CLS) and iBOT
(patch) projection heads, the optional pixel decoder and, for feature distillation, linear maps to the
teacher's width. Heads exist only for the terms the plan runs, so ablations train (and DDP syncs) no dead
parameters. Its ``forward`` takes a :class:`~tips.data.Batch` and runs every student pass of a step; same-size
inputs share one forward (the unmasked and masked global crops run as one batch of 2B images).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..data.batch import Batch
from ..losses.mim import select_patches
from ..models.heads import PixelDecoder, ProjectionHead
from ..models.tips import TIPS
from ..models.vision import NUM_PREFIX_TOKENS
from .config import LossSection
from .plan import TrainPlan
from .teacher import ema_update


@dataclass
class StudentOutputs:
    """Everything the objective needs from the student for one batch of B images (None: the term is off).

    cls_alt, cls_syn: (B, D) CLS1 / CLS2 of the contrastive view.
    text_alt, text_syn: (B, D) pooled embeddings of the alt-text and the synthetic caption.
    local_cls: (B·M, D) CLS1 of the local crops; dino_logits (B, M, K) the DINO head on them.
    masked_patches: (B, N, D) patch tokens of the masked view; ibot_logits (T, K) the iBOT head on the selected
        ones; pixel_pred (B, N, p²·3) the pixel decoder's output.
    patch_index, patch_weights: (T,) the patches the masked-modelling loss uses and their weights.
    plain_patches: (B, N, D) patch tokens of the global crop from a pass that is run anyway (the retention
        guard's input); plain_keep (B, N) bool the patches of it that were not masked (None: all).
    """

    cls_alt: torch.Tensor | None = None
    cls_syn: torch.Tensor | None = None
    text_alt: torch.Tensor | None = None
    text_syn: torch.Tensor | None = None
    local_cls: torch.Tensor | None = None
    dino_logits: torch.Tensor | None = None
    masked_patches: torch.Tensor | None = None
    ibot_logits: torch.Tensor | None = None
    pixel_pred: torch.Tensor | None = None
    patch_index: torch.Tensor | None = None
    patch_weights: torch.Tensor | None = None
    plain_patches: torch.Tensor | None = None
    plain_keep: torch.Tensor | None = None


def with_patch_selection(batch: Batch, plan: TrainPlan) -> Batch:
    """``batch`` with the masked-modelling patch index and weights; run it on the host (T is data-dependent)."""
    if batch.patch_index is not None or not plan.masked_view:
        return batch
    index, weights = select_patches(batch.patch_mask, plan.all_patches)
    return replace(batch, patch_index=index, patch_weights=weights)


class TIPSStudent(nn.Module):
    """TIPS towers + the heads the plan needs. ``model`` is a plain :class:`TIPS` (what gets exported)."""

    def __init__(self, model: TIPS, plan: TrainPlan, loss_cfg: LossSection,
                 teacher_width: int | None = None) -> None:
        super().__init__()
        self.model, self.plan, self.loss_cfg = model, plan, loss_cfg
        width = model.width
        head = lambda k: ProjectionHead(width, k, loss_cfg.head_hidden, loss_cfg.head_bottleneck)  # noqa: E731
        self.dino_head = head(loss_cfg.dino_k) if plan.dino_head else None
        self.ibot_head = head(loss_cfg.ibot_k) if plan.ibot_head else None
        self.pixel_decoder = PixelDecoder(width, model.patch_size) if plan.pixel_decoder else None
        self.feature_proj = None
        if plan.feature_targets:  # distillation from released weights (no heads): student width → teacher width
            if teacher_width is None:
                raise ValueError("feature distillation needs the frozen teacher's width")
            self.feature_proj = nn.ModuleDict({"cls": nn.Linear(width, teacher_width),
                                               "patch": nn.Linear(width, teacher_width)})

    def forward(self, batch: Batch) -> StudentOutputs:
        """Every student pass of one step on ``batch`` (see :class:`StudentOutputs`)."""
        plan, vision = self.plan, self.model.vision
        x, mask = batch.global_crop, batch.patch_mask  # (B, 3, H, W), (B, N)
        B = x.shape[0]
        out = StudentOutputs()
        contrastive = plan.contrastive_alt or plan.contrastive_syn
        cls = None
        if plan.masked_view and contrastive and self.loss_cfg.contrastive_view == "unmasked":
            tokens = vision.forward_features(torch.cat([x, x]), torch.cat([torch.zeros_like(mask), mask]))  # (2B, 2+N, D)
            cls, out.masked_patches = tokens[:B, :NUM_PREFIX_TOKENS], tokens[B:, NUM_PREFIX_TOKENS:]
            out.plain_patches = tokens[:B, NUM_PREFIX_TOKENS:]
        elif plan.masked_view:
            tokens = vision.forward_features(x, mask)
            cls, out.masked_patches = tokens[:, :NUM_PREFIX_TOKENS], tokens[:, NUM_PREFIX_TOKENS:]
            out.plain_patches, out.plain_keep = out.masked_patches, ~mask
        elif contrastive:
            tokens = vision.forward_features(x)
            cls, out.plain_patches = tokens[:, :NUM_PREFIX_TOKENS], tokens[:, NUM_PREFIX_TOKENS:]
        if cls is not None:
            out.cls_alt, out.cls_syn = cls[:, 0], cls[:, 1]

        if plan.local_crops:
            M = batch.local_crops.shape[1]
            out.local_cls = vision.forward_features(batch.local_crops.flatten(0, 1))[:, 0]  # (B·M, D), CLS1
            if self.dino_head is not None:
                out.dino_logits = self.dino_head(out.local_cls).view(B, M, -1)

        if plan.masked_view:
            selected = with_patch_selection(batch, plan)
            out.patch_index, out.patch_weights = selected.patch_index, selected.patch_weights
            if self.pixel_decoder is not None:
                grid = (x.shape[-2] // vision.patch_size, x.shape[-1] // vision.patch_size)
                out.pixel_pred = self.pixel_decoder(out.masked_patches, mask, grid)
            elif self.ibot_head is not None:
                flat = out.masked_patches.reshape(-1, out.masked_patches.shape[-1])  # (B·N, D)
                out.ibot_logits = self.ibot_head(flat[out.patch_index])  # (T, K)

        out.text_alt, out.text_syn = self._encode_captions(batch)
        return out

    def _encode_captions(self, batch: Batch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Only the captions of the terms that run are encoded. Both kinds share one text-tower pass when they
        have the same (trimmed) length; otherwise two passes, since padding the short alt-texts (a few words) to
        the long synthetic captions (up to the full context) would make most of the text tower's work padding."""
        plan, text = self.plan, self.model.text
        if plan.contrastive_alt and plan.contrastive_syn:
            if batch.alt_ids.shape[1] == batch.syn_ids.shape[1]:
                both = text.pool(torch.cat([batch.alt_ids, batch.syn_ids]),
                                 torch.cat([batch.alt_padding, batch.syn_padding]))  # (2B, D)
                return both[: len(batch.alt_ids)], both[len(batch.alt_ids):]
            return text.pool(batch.alt_ids, batch.alt_padding), text.pool(batch.syn_ids, batch.syn_padding)
        if plan.contrastive_alt:
            return text.pool(batch.alt_ids, batch.alt_padding), None
        if plan.contrastive_syn:
            return None, text.pool(batch.syn_ids, batch.syn_padding)
        return None, None


@dataclass
class TeacherTargets:
    """Teacher outputs on the unmasked global crop: dino_logits (B, K) and ibot_logits (T, K) at the selected
    patches from prototype heads; for feature distillation cls (B, D_t) and patches (B, N, D_t)."""

    dino_logits: torch.Tensor | None = None
    ibot_logits: torch.Tensor | None = None
    cls: torch.Tensor | None = None
    patches: torch.Tensor | None = None


class TIPSTeacher(nn.Module):
    """The teacher's image tower and heads (no text tower: the teacher only makes self-supervised targets).

    ``vision`` is an EMA copy, the live student tower (head-only EMA, TIPSv2) or a frozen model; ``kind`` is the
    plan's teacher kind and decides what ``forward`` returns and what ``update`` moves.
    """

    def __init__(self, kind: str, vision: nn.Module, dino_head: nn.Module | None = None,
                 ibot_head: nn.Module | None = None) -> None:
        super().__init__()
        self.kind, self.vision, self.dino_head, self.ibot_head = kind, vision, dino_head, ibot_head

    @torch.no_grad()
    def forward(self, global_crop: torch.Tensor, patch_index: torch.Tensor | None) -> TeacherTargets:
        """global_crop (B, 3, H, W), patch_index (T,) or None → targets (see :class:`TeacherTargets`)."""
        was_training = self.vision.training  # a live student tower (head-only EMA) runs without drop-path here
        self.vision.eval()
        tokens = self.vision.forward_features(global_crop)  # (B, 2 + N, D)
        self.vision.train(was_training)
        cls, patches = tokens[:, 0], tokens[:, NUM_PREFIX_TOKENS:]
        if self.kind == "frozen_features":
            return TeacherTargets(cls=cls, patches=patches)
        targets = TeacherTargets()
        if self.dino_head is not None:
            targets.dino_logits = self.dino_head(cls)
        if self.ibot_head is not None and patch_index is not None:
            targets.ibot_logits = self.ibot_head(patches.reshape(-1, patches.shape[-1])[patch_index])
        return targets

    @torch.no_grad()
    def update(self, student: TIPSStudent, momentum: float) -> None:
        """EMA step after an optimiser step: tower and heads (``ema``), heads only (``head_only_ema``), else none."""
        if self.kind not in ("ema", "head_only_ema"):
            return
        if self.kind == "ema":
            ema_update(self.vision, student.model.vision, momentum)
        for name in ("dino_head", "ibot_head"):
            mine = getattr(self, name)
            if mine is not None:
                ema_update(mine, getattr(student, name), momentum)

    def trainable_state(self, sharded: bool = False) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold to resume the teacher: EMA tower + heads, or heads only. ``sharded``:
        the tensors as they are (DTensors under FSDP, for ``torch.distributed.checkpoint``), else CPU copies."""
        if self.kind not in ("ema", "head_only_ema"):
            return {}
        sd = self.state_dict()
        if self.kind == "head_only_ema":  # the tower is the live student's
            sd = {k: v for k, v in sd.items() if not k.startswith("vision.")}
        if sharded:
            return sd
        return {k: v.detach().contiguous().cpu() for k, v in sd.items()}
