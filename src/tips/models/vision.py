"""The TIPS image tower: timm's VisionTransformer with two CLS tokens, a mask token and bilinear positions.

Token layout after the final LayerNorm: ``[CLS1 (cls_alt), CLS2 (cls_syn), patch_1 … patch_N]``, patches
row-major. timm supplies the blocks (SDPA attention, LayerScale, stochastic depth, gradient checkpointing);
this module only changes how positions are resampled (bilinear, antialiased, explicit output size, as the
official encoder does; timm's dynamic path is bicubic) and adds masked-image-modelling input.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from timm.layers import GluMlp, Mlp
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .variants import VisionConfig

NUM_PREFIX_TOKENS = 2  # CLS1 (timm cls_token) and CLS2 (timm's single reg_token)


@dataclass
class ImageFeatures:
    """Output of the image tower, all after the final LayerNorm and not L2-normalised.

    cls_alt: (B, D) first CLS token, trained against web alt-text.
    cls_syn: (B, D) second CLS token, trained against synthetic captions.
    patch_tokens: (B, h, w, D) patch grid, h = H // p, w = W // p.
    """

    cls_alt: torch.Tensor
    cls_syn: torch.Tensor
    patch_tokens: torch.Tensor


def resample_pos_grid(pos_grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample a (1, G*G, D) or (1, G, G, D) position table to (1, h*w, D) as the official encoder does.

    Bilinear, half-pixel centres, antialias on, output size given explicitly. Computed in fp32.
    """
    if pos_grid.ndim == 3:
        g = int(round(pos_grid.shape[1] ** 0.5))
        if g * g != pos_grid.shape[1]:
            raise ValueError(f"position table has {pos_grid.shape[1]} rows, not a square grid")
        pos_grid = pos_grid.reshape(1, g, g, -1)
    h, w = size
    if tuple(pos_grid.shape[1:3]) == (h, w):
        return pos_grid.reshape(1, h * w, -1)
    dtype = pos_grid.dtype
    grid = pos_grid.float().permute(0, 3, 1, 2)  # (1, D, G, G)
    grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return grid.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(dtype)


def _fixed_hidden(layer: Callable[..., nn.Module], hidden: int) -> Callable[..., nn.Module]:
    """An ``mlp_layer`` for timm's Block that ignores ``int(dim * mlp_ratio)`` and uses an exact hidden width.

    Ratios such as 4304/1152 do not survive float rounding, and SwiGLU widths are not a ratio at all.
    """

    def build(in_features: int, hidden_features: int | None = None, **kwargs) -> nn.Module:
        return layer(in_features=in_features, hidden_features=hidden, **kwargs)

    return build


class TIPSVisionTransformer(VisionTransformer):
    """timm ViT with the TIPS readout. Build it with :func:`build_vision_tower`."""

    def __init__(self, cfg: VisionConfig, **timm_kwargs) -> None:
        if cfg.ffn == "swiglu":
            # Packed first projection [SiLU branch; linear branch] of width 2*hidden, like the official `w12`.
            mlp_layer = _fixed_hidden(partial(GluMlp, gate_last=False), 2 * cfg.mlp_hidden)
            act_layer: Callable[..., nn.Module] = nn.SiLU
        else:
            mlp_layer = _fixed_hidden(Mlp, cfg.mlp_hidden)
            act_layer = partial(nn.GELU, approximate="tanh") if cfg.gelu == "tanh" else nn.GELU
        super().__init__(
            img_size=cfg.pos_grid * cfg.patch_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.width,
            depth=cfg.depth,
            num_heads=cfg.heads,
            mlp_ratio=cfg.mlp_hidden / cfg.width,
            qkv_bias=True,
            init_values=1.0,
            class_token=True,
            reg_tokens=1,
            no_embed_class=True,
            num_classes=0,
            global_pool="token",
            dynamic_img_size=True,
            drop_path_rate=cfg.drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=cfg.ln_eps),
            act_layer=act_layer,
            mlp_layer=mlp_layer,
            **timm_kwargs,
        )
        self.cfg = cfg
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.width))

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    @property
    def width(self) -> int:
        return self.cfg.width

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token"}

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, w, D) patch embeddings → (B, 2 + h*w, D) tokens with positions on the patches only."""
        B, h, w, D = x.shape
        x = x.reshape(B, h * w, D) + resample_pos_grid(self.pos_embed, (h, w))
        prefix = torch.cat([self.cls_token, self.reg_token], dim=1).expand(B, -1, -1)
        return self.pos_drop(torch.cat([prefix, x], dim=1))

    def _check_size(self, x: torch.Tensor) -> None:
        H, W = x.shape[-2:]
        p = self.cfg.patch_size
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if H % p or W % p:
            raise ValueError(
                f"image size {H}x{W} is not a multiple of the patch size {p}; resize or centre-pad "
                f"(e.g. to {(H // p + 1) * p}x{(W // p + 1) * p})"
            )

    def embed(self, x: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] → input tokens (B, 2 + N, D).

        patch_mask: optional (B, N) bool, True = masked; masked patch embeddings are replaced by the
        learned mask token *before* positions are added, so masked tokens keep their position.
        """
        self._check_size(x)
        x = self.patch_embed(x)  # (B, h, w, D)
        if patch_mask is not None:
            B, h, w, D = x.shape
            if patch_mask.shape != (B, h * w):
                raise ValueError(f"patch_mask has shape {tuple(patch_mask.shape)}, expected {(B, h * w)}")
            m = patch_mask.to(torch.bool).reshape(B, h, w, 1)
            x = torch.where(m, self.mask_token.to(x.dtype).view(1, 1, 1, D), x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def forward_features(self, x: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """Images (B, 3, H, W) in [0, 1] → all tokens after the final LayerNorm, (B, 2 + N, D): [CLS1, CLS2, patches].

        timm's contract, plus an optional (B, N) ``patch_mask`` (True = masked, see :meth:`embed`).
        """
        x = self.embed(x, patch_mask)
        if self.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_tokens(self, x: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`forward_features` (the name the training code uses)."""
        return self.forward_features(x, patch_mask)

    def forward(self, x: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """timm's contract: images → ``forward_head(forward_features(x))``; with no classifier, CLS1 (B, D).

        The split into CLS1, CLS2 and the patch grid is :meth:`tips.TIPS.encode_image`.
        """
        return self.forward_head(self.forward_features(x, patch_mask))

    def intermediate_layers(
        self, x: torch.Tensor, indices: int | list[int] = 1, norm: bool = True
    ) -> list[ImageFeatures]:
        """Features after chosen blocks, split like :meth:`tips.TIPS.encode_image`: ``indices`` = last n blocks (int)
        or block indices (list); built on timm's ``forward_intermediates``.

        norm=True applies the final LayerNorm to each (as DINOv2's ``get_intermediate_layers(norm=True)``).
        """
        self._check_size(x)
        h, w = x.shape[-2] // self.cfg.patch_size, x.shape[-1] // self.cfg.patch_size
        outs = self.forward_intermediates(
            x, indices=indices, norm=norm, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
        )
        return [split_tokens(torch.cat([prefix, patches], dim=1), h, w) for patches, prefix in outs]


def split_tokens(tokens: torch.Tensor, h: int, w: int) -> ImageFeatures:
    """(B, 2 + h*w, D) tokens → :class:`ImageFeatures`."""
    B, _, D = tokens.shape
    return ImageFeatures(
        cls_alt=tokens[:, 0],
        cls_syn=tokens[:, 1],
        patch_tokens=tokens[:, NUM_PREFIX_TOKENS:].reshape(B, h, w, D),
    )


def build_vision_tower(cfg: VisionConfig) -> TIPSVisionTransformer:
    """Build a randomly initialised TIPS image tower (timm's default init)."""
    return TIPSVisionTransformer(cfg)
