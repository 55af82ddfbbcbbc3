"""TIPS = image tower + text tower + two contrastive temperatures."""

from __future__ import annotations

import math
import contextlib
from typing import ContextManager, Sequence

import torch
from PIL import Image
from torch import nn

from .tokenizers import Tokenizer
from .preprocess import Preprocess
from .text import TextTower, build_text_tower
from .variants import ModelConfig
from .vision import ImageFeatures, TIPSVisionTransformer, build_vision_tower, split_tokens

INIT_LOGIT_SCALE = math.log(1 / 0.07)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / max(‖x‖, 1e-3) along the last dim (the clamp TIPS consumers use)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-3)


class TIPS(nn.Module):
    """Both towers and the two learnable logit scales (log of 1/temperature), one per CLS token.

    ``temperature`` / ``temperature_syn`` are the stored temperatures τ = exp(−logit_scale), or None when
    the weights came from a file that carries none (e.g. an official vision-only file).
    """

    def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision: TIPSVisionTransformer = build_vision_tower(cfg.vision)
        self.text: TextTower | None = build_text_tower(cfg.text) if cfg.text is not None else None
        self.logit_scale_alt = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
        self.logit_scale_syn = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
        self.has_temperature = {"alt": True, "syn": True}
        self.tokenizer = tokenizer
        self.preprocess = Preprocess(self.image_size, cfg.vision.patch_size)

    # ----------------------------------------------------------------- properties
    @property
    def patch_size(self) -> int:
        return self.cfg.vision.patch_size

    @property
    def width(self) -> int:
        return self.cfg.vision.width

    @property
    def image_size(self) -> int:
        """Native resolution: the stored position grid times the patch size (448 for official 32×32 grids)."""
        return self.cfg.vision.pos_grid * self.cfg.vision.patch_size

    @property
    def temperature(self) -> float | None:
        return math.exp(-self.logit_scale_alt.item()) if self.has_temperature["alt"] else None

    @property
    def temperature_syn(self) -> float | None:
        return math.exp(-self.logit_scale_syn.item()) if self.has_temperature["syn"] else None

    def set_temperatures(self, alt: float | None, syn: float | None) -> None:
        """Store τ values (None = unknown, leaves the init value in place)."""
        with torch.no_grad():
            for name, tau in (("alt", alt), ("syn", syn)):
                self.has_temperature[name] = tau is not None
                if tau is not None:
                    if not tau > 0:
                        raise ValueError(f"temperature_{name} must be > 0, got {tau}")
                    getattr(self, f"logit_scale_{name}").fill_(-math.log(tau))

    # ----------------------------------------------------------------- encoders
    def _autograd(self, grad: bool | None) -> ContextManager:
        """The rule of ``encode_image`` / ``encode_text``: gradients are recorded when asked (``grad=True``), or with
        ``grad=None`` when the model is in train mode and grad mode is on; otherwise, where autograd would record,
        the call runs under ``torch.inference_mode()`` (an eval-mode model keeps no activations for a backward
        pass it will never take). Inside ``torch.no_grad()`` or while tracing / compiling nothing changes."""
        if grad is None:
            grad = self.training
        if grad or not torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return contextlib.nullcontext()
        return torch.inference_mode()

    def encode_image(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None,
                     grad: bool | None = None) -> ImageFeatures:
        """images (B, 3, H, W) float in [0, 1], H and W multiples of the patch size → :class:`ImageFeatures`.

        The one place where the tower's (B, 2 + N, D) tokens are split into CLS1, CLS2 and the (h, w) patch grid.
        grad: record gradients (True), run under ``torch.inference_mode()`` (False), or None: record only when the
        model is in train mode (``tips.load`` and ``tips.create_model`` return eval mode; call ``.train()`` or pass
        ``grad=True`` to fine-tune through this call).
        """
        with self._autograd(grad):
            tokens = self.vision.forward_features(images, patch_mask)
            p = self.cfg.vision.patch_size
            return split_tokens(tokens, images.shape[-2] // p, images.shape[-1] // p)

    def tokenize(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer attached: pass tokenizer='bpe' or a SentencePiece .model path to "
                "tips.load, or call encode_text(ids, padding) with token ids"
            )
        return self.tokenizer(texts)

    def encode_text(self, ids: torch.Tensor | str | Sequence[str], padding: torch.Tensor | None = None,
                    grad: bool | None = None) -> torch.Tensor:
        """ids (B, L) int64 with padding (B, L) True/1 where padded, or a list of strings → (B, D), not normalised.

        grad: as in :meth:`encode_image` (None: gradients only in train mode)."""
        if self.text is None:
            raise ValueError("this model has no text tower: pass text=<official text .npz> to tips.load")
        if isinstance(ids, str) or (isinstance(ids, Sequence) and not isinstance(ids, torch.Tensor)):
            ids, padding = self.tokenize(ids)
        if padding is None:
            raise ValueError("encode_text(ids, padding): padding (B, L), True where padded, is required with ids")
        device = self.text.token_embedding.weight.device
        with self._autograd(grad):
            return self.text(ids.to(device), padding.to(device))

    def _images_to_tensor(self, images: torch.Tensor | Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return images if images.ndim == 4 else images[None]
        if isinstance(images, Image.Image):
            images = [images]
        return torch.stack([self.preprocess(im) for im in images])

    @torch.no_grad()
    def similarity(
        self,
        images: torch.Tensor | Image.Image | Sequence[Image.Image],
        texts: torch.Tensor | str | Sequence[str],
        cls: str = "alt",
        padding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Zero-shot logits (B_img, B_txt) = cos(image CLS, text) / τ of that CLS.

        cls: "alt" (CLS1, default), "syn" (CLS2) or "mean" (mean of both normalised CLS, CLS1's τ).
        """
        x = self._images_to_tensor(images)
        param = next(self.vision.parameters())
        feats = self.encode_image(x.to(param.device, param.dtype))
        if cls == "alt":
            img, scale = l2_normalize(feats.cls_alt), self.logit_scale_alt
        elif cls == "syn":
            img, scale = l2_normalize(feats.cls_syn), self.logit_scale_syn
        elif cls == "mean":
            img = l2_normalize(l2_normalize(feats.cls_alt) + l2_normalize(feats.cls_syn))
            scale = self.logit_scale_alt
        else:
            raise ValueError(f"cls must be 'alt', 'syn' or 'mean', got {cls!r}")
        txt = l2_normalize(self.encode_text(texts, padding))
        return img @ txt.to(img.dtype).T * scale.exp().to(img.dtype)

