"""The student and teacher networks of a TIPS pretraining run.

The student is one ``nn.Module`` (so DDP/FSDP wrap it whole): the TIPS towers, the DINO (CLS) and iBOT
(patch) projection heads, and the optional pixel decoder. Its ``forward`` runs every student pass of a step
and returns the tensors the losses need; same-size inputs share one forward (the unmasked and masked global
crops run as one batch of 2B images).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..losses.mim import select_patches
from ..models.heads import PixelDecoder, ProjectionHead
from ..models.tips import TIPS
from ..models.vision import NUM_PREFIX_TOKENS
from .config import LossSection


@dataclass
class StudentOutputs:
    """Everything the objective needs from the student for one batch of B images.

    cls_alt, cls_syn: (B, D) CLS1 / CLS2 of the contrastive view.
    text_alt, text_syn: (B, D) pooled text embeddings of the alt-text and the synthetic caption (``text_syn`` is
        None when the synthetic-caption term is off: the caption is then not encoded at all).
    dino_logits: (B, M, K) DINO-head output on CLS1 of each local crop.
    patch_index: (T,) flat indices into B·N of the patches the MIM loss uses; patch_weights (T,).
    ibot_logits: (T, K) iBOT-head output on those masked-view patch tokens (None for pixel MIM).
    pixel_pred: (B, N, p²·3) decoder output (pixel MIM only).
    local_cls: (B·M, D) CLS1 of local crops (feature distillation).
    masked_patches: (B, N, D) patch tokens of the masked view.
    """

    cls_alt: torch.Tensor
    cls_syn: torch.Tensor
    text_alt: torch.Tensor
    text_syn: torch.Tensor | None
    dino_logits: torch.Tensor | None
    patch_index: torch.Tensor
    patch_weights: torch.Tensor
    ibot_logits: torch.Tensor | None
    pixel_pred: torch.Tensor | None
    local_cls: torch.Tensor | None
    masked_patches: torch.Tensor


class TIPSStudent(nn.Module):
    """TIPS towers + projection heads. ``model`` is a plain :class:`TIPS` (what gets exported)."""

    def __init__(self, model: TIPS, loss_cfg: LossSection, feature_targets: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss_cfg = loss_cfg
        width = model.width
        w = loss_cfg.weights
        # Heads exist only for terms that are on, so ablations train (and DDP syncs) no dead parameters.
        use_heads = feature_targets is None
        self.dino_head = (
            ProjectionHead(width, loss_cfg.dino_k, loss_cfg.head_hidden, loss_cfg.head_bottleneck)
            if use_heads and w.distill > 0 else None
        )  # fmt: skip
        self.ibot_head = (
            ProjectionHead(width, loss_cfg.ibot_k, loss_cfg.head_hidden, loss_cfg.head_bottleneck)
            if use_heads and w.mask > 0 and loss_cfg.mim_target == "features" else None
        )  # fmt: skip
        self.pixel_decoder = (
            PixelDecoder(width, model.patch_size) if w.mask > 0 and loss_cfg.mim_target == "pixels" else None
        )
        self.use_local_crops = w.distill > 0
        self.use_masked_view = w.mask > 0
        self.use_syn_caption = w.contrastive_syn > 0
        # Distillation from released weights (no heads): linear maps student width → teacher width.
        self.feature_proj = (
            nn.ModuleDict({"cls": nn.Linear(width, feature_targets[0]), "patch": nn.Linear(width, feature_targets[1])})
            if feature_targets is not None
            else None
        )

    def forward(
        self,
        global_crop: torch.Tensor,
        local_crops: torch.Tensor,
        patch_mask: torch.Tensor,
        alt_ids: torch.Tensor,
        alt_padding: torch.Tensor,
        syn_ids: torch.Tensor,
        syn_padding: torch.Tensor,
    ) -> StudentOutputs:
        """global_crop (B,3,H,W), local_crops (B,M,3,h,w), patch_mask (B,N), ids/padding (B,L)."""
        vision = self.model.vision
        B = global_crop.shape[0]
        if not self.use_masked_view:
            tokens = vision.forward_tokens(global_crop)
            cls, masked_patches = tokens[:, :NUM_PREFIX_TOKENS], tokens[:, NUM_PREFIX_TOKENS:]
        elif self.loss_cfg.contrastive_view == "unmasked" and bool(patch_mask.any()):
            both = torch.cat([global_crop, global_crop])
            mask = torch.cat([torch.zeros_like(patch_mask), patch_mask])
            tokens = vision.forward_tokens(both, mask)  # (2B, 2 + N, D)
            cls, masked_patches = tokens[:B, :NUM_PREFIX_TOKENS], tokens[B:, NUM_PREFIX_TOKENS:]
        else:
            tokens = vision.forward_tokens(global_crop, patch_mask)
            cls, masked_patches = tokens[:, :NUM_PREFIX_TOKENS], tokens[:, NUM_PREFIX_TOKENS:]

        M = local_crops.shape[1]
        local_cls = dino_logits = None
        if self.use_local_crops:
            local_cls = vision.forward_tokens(local_crops.flatten(0, 1))[:, 0]  # (B·M, D), CLS1
            if self.dino_head is not None:
                dino_logits = self.dino_head(local_cls).view(B, M, -1)

        patch_index, patch_weights = select_patches(patch_mask, self.loss_cfg.ibot_plus_plus)
        ibot_logits = pixel_pred = None
        if self.pixel_decoder is not None:
            h, w = global_crop.shape[-2] // vision.patch_size, global_crop.shape[-1] // vision.patch_size
            pixel_pred = self.pixel_decoder(masked_patches, patch_mask, (h, w))
        elif self.ibot_head is not None:
            selected = masked_patches.reshape(-1, masked_patches.shape[-1])[patch_index]  # (T, D)
            ibot_logits = self.ibot_head(selected)

        if self.use_syn_caption:
            text = self.model.text(torch.cat([alt_ids, syn_ids]), torch.cat([alt_padding, syn_padding]))  # (2B, D)
        else:  # CLIP-style ablation: the (longer) synthetic caption would cost text-tower time for nothing
            text = self.model.text(alt_ids, alt_padding)  # (B, D)
        return StudentOutputs(
            cls_alt=cls[:, 0],
            cls_syn=cls[:, 1],
            text_alt=text[:B],
            text_syn=text[B:] if self.use_syn_caption else None,
            dino_logits=dino_logits,
            patch_index=patch_index,
            patch_weights=patch_weights,
            ibot_logits=ibot_logits,
            pixel_pred=pixel_pred,
            local_cls=local_cls,
            masked_patches=masked_patches,
        )


@dataclass
class TeacherTargets:
    """Teacher outputs on the unmasked global crop. dino_logits (B, K); ibot_logits (T, K) at patch_index;
    for feature distillation instead: cls (B, D_t) and patches (B, N, D_t)."""

    dino_logits: torch.Tensor | None = None
    ibot_logits: torch.Tensor | None = None
    cls: torch.Tensor | None = None
    patches: torch.Tensor | None = None


class TIPSTeacher(nn.Module):
    """The teacher's image tower and heads (no text tower: the teacher only makes self-supervised targets).

    ``vision`` may be an EMA copy, the live student tower (head-only EMA, TIPSv2) or a frozen model.
    """

    def __init__(self, vision: nn.Module, dino_head: nn.Module | None, ibot_head: nn.Module | None) -> None:
        super().__init__()
        self.vision = vision
        self.dino_head = dino_head
        self.ibot_head = ibot_head

    @torch.no_grad()
    def forward(self, global_crop: torch.Tensor, patch_index: torch.Tensor) -> TeacherTargets:
        was_training = self.vision.training  # a live student tower (head-only EMA) runs without drop-path here
        self.vision.eval()
        tokens = self.vision.forward_tokens(global_crop)  # (B, 2 + N, D)
        self.vision.train(was_training)
        cls, patches = tokens[:, 0], tokens[:, NUM_PREFIX_TOKENS:]
        if self.dino_head is None:
            return TeacherTargets(cls=cls, patches=patches)
        selected = patches.reshape(-1, patches.shape[-1])[patch_index]
        ibot = self.ibot_head(selected) if self.ibot_head is not None else None
        return TeacherTargets(dino_logits=self.dino_head(cls), ibot_logits=ibot)
