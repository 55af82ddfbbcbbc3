"""Training-only heads: the DINO / iBOT projection head (MLP → L2-normalise → weight-normalised prototypes) and
the MAE-style pixel decoder."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, nlayers: int) -> nn.Sequential:
    """``nlayers`` linears in_dim → hidden … hidden → out_dim with GELU between them."""
    if nlayers < 1:
        raise ValueError(f"nlayers must be >= 1, got {nlayers}")
    dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [out_dim]
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        if i:
            layers.append(nn.GELU())
        layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


class ProjectionHead(nn.Module):
    """MLP → L2-normalise → weight-normalised prototype layer (no bias), as DINOv2's ``DINOHead``.

    ``last_layer`` holds the prototypes; its parameters are ``last_layer.parametrizations.weight.original0``
    (gain g, (out_dim, 1), init 1, trainable) and ``...original1`` (direction v, (out_dim, bottleneck_dim)).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
    ) -> None:
        super().__init__()
        self.mlp = _mlp(in_dim, hidden_dim, bottleneck_dim, nlayers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (…, in_dim) → prototype logits (…, out_dim)."""
        z = self.mlp(x)  # (…, bottleneck)
        # Normalised in fp32: the 1e-12 floor underflows in fp16.
        z = F.normalize(z.float(), dim=-1, eps=1e-12).to(z.dtype)
        return self.last_layer(z)


def sincos_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (h·w, dim), row-major; first half encodes the row, second the column."""
    h, w = grid
    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )

    def encode(coord: torch.Tensor) -> torch.Tensor:
        angles = coord.reshape(-1, 1) * omega  # (h·w, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (h·w, dim/2)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


class PixelDecoder(nn.Module):
    """MAE-style light decoder for ``mim_target: pixels``: patch tokens → p·p·3 pixel values per patch.

    Unlike MAE's, our encoder already saw every position (masked ones as the encoder's mask token), so the
    decoder overwrites the masked positions with its own learned mask token.
    """

    def __init__(
        self,
        embed_dim: int,
        patch_size: int,
        decoder_dim: int = 512,
        depth: int = 8,
        heads: int = 16,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.decoder_dim = decoder_dim
        self.embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(decoder_dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)
        )
        self.norm = norm_layer(decoder_dim)
        self.pred = nn.Linear(decoder_dim, patch_size * patch_size * 3)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform linears, zero biases, unit LayerNorms, mask token N(0, 0.02), as MAE."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, patch_tokens: torch.Tensor, patch_mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """patch_tokens (B, N, D), patch_mask (B, N) bool (True = masked), grid (h, w), h·w = N → (B, N, p·p·3)."""
        h, w = grid
        if patch_tokens.shape[1] != h * w:
            raise ValueError(f"{patch_tokens.shape[1]} tokens do not fill a {h}x{w} grid")
        x = self.embed(patch_tokens)  # (B, N, Dd)
        x = torch.where(patch_mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = x + sincos_2d(grid, self.decoder_dim).to(device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))  # (B, N, p·p·3)
