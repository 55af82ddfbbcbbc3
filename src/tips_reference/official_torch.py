"""An independent re-implementation of the official TIPS PyTorch reference encoders (test ground truth).

Written from the published description of the towers and their ``.npz`` layouts only, in the plain style of the DINOv2 reference the
official port follows: unfused attention, explicit token preparation, parameter names equal to the official
state-dict keys so that :func:`save_official_npz` writes files in the official ``.npz`` layout.

Nothing here imports ``tips``: this module is what the library is compared against.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VISION_LN_EPS = 1e-6
TEXT_LN_EPS = 1e-5


# --------------------------------------------------------------------------------------------------------------
# Image encoder (DINOv2 with one register, as in pytorch/image_encoder.py)
# --------------------------------------------------------------------------------------------------------------


class _PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → tokens: (B,3,H,W) → (B,(H/p)(W/p),D), row-major."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class _Attention(nn.Module):
    """Plain multi-head self-attention with a packed qkv projection (rows [q; k; v]), computed explicitly."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # each (B, H, N, dh)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out)


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Mlp(nn.Module):
    """fc1 → exact (erf) GELU → fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="none"))


class _SwiGLU(nn.Module):
    """w3(SiLU(a) ⊙ b) with [a; b] = w12(x); ``w12`` packs the SiLU branch first. hidden = per-branch width."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class _VisionBlock(nn.Module):
    """Pre-LN block with LayerScale on both residual branches."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, ffn: Literal["mlp", "swiglu"]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=VISION_LN_EPS)
        self.attn = _Attention(dim, num_heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=VISION_LN_EPS)
        self.mlp = _Mlp(dim, mlp_hidden) if ffn == "mlp" else _SwiGLU(dim, mlp_hidden)
        self.ls2 = _LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class OfficialVisionEncoder(nn.Module):
    """The official TIPS image tower: tokens [CLS1, CLS2 (= the register), patches] → final LayerNorm.

    ``grid`` is the stored position grid G (``pos_embed`` has 1 + G² rows; row 0 belongs to CLS1).
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_hidden: int,
        ffn: Literal["mlp", "swiglu"] = "mlp",
        patch_size: int = 14,
        grid: int = 16,
    ) -> None:
        super().__init__()
        if ffn not in ("mlp", "swiglu"):
            raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {ffn!r}")
        self.embed_dim, self.patch_size, self.grid = embed_dim, patch_size, grid
        self.patch_embed = _PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.blocks = nn.ModuleList(_VisionBlock(embed_dim, num_heads, mlp_hidden, ffn) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=VISION_LN_EPS)

    def interpolate_pos_embed(self, h0: int, w0: int) -> torch.Tensor:
        """Positions for an h0×w0 token grid: (1, 1 + h0·w0, D). Row 0 (CLS1) is never resampled.

        Bilinear, half-pixel centres, antialias on, explicit output size; skipped when (h0, w0) = (G, G).
        """
        if (h0, w0) == (self.grid, self.grid):
            return self.pos_embed
        d = self.embed_dim
        grid = self.pos_embed[:, 1:].reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)  # (1, D, G, G)
        grid = F.interpolate(grid.float(), size=(h0, w0), mode="bilinear", antialias=True, align_corners=False)
        grid = grid.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, h0 * w0, d)
        return torch.cat([self.pos_embed[:, :1], grid], dim=1)

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """(B,3,H,W) pixels (+ optional (B,N) bool mask, True = masked) → (B, 2 + N, D) input tokens."""
        b, _, h, w = x.shape
        tokens = self.patch_embed(x)  # (B, N, D)
        if masks is not None:
            tokens = torch.where(masks.bool().unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        tokens = tokens + self.interpolate_pos_embed(h // self.patch_size, w // self.patch_size)
        # The register is inserted after the positions are added: it never gets one.
        return torch.cat([tokens[:, :1], self.register_tokens.expand(b, -1, -1), tokens[:, 1:]], dim=1)

    def forward(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B,3,H,W) → (CLS1 (B,1,D), CLS2 (B,1,D), patches (B,N,D)), all after the final LayerNorm."""
        tokens = self.prepare_tokens(x, masks)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        return tokens[:, 0:1], tokens[:, 1:2], tokens[:, 2:]


# --------------------------------------------------------------------------------------------------------------
# Text encoder (pytorch/text_encoder.py)
# --------------------------------------------------------------------------------------------------------------


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) table: PE[p] = concat(sin(p·ω), cos(p·ω)), ω_k = exp(−k·ln(1e4)/(dim/2 − 1)).

    Sin and cos are concatenated, not interleaved; an odd width gets one zero column.
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float64)
    omega = torch.exp(-k * math.log(1e4) / max(half - 1, 1))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * omega[None, :]  # (L, D/2)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table.float()


class _TextMlp(nn.Module):
    """c_fc → ReLU → ⊙ keep → c_proj → ⊙ keep, where keep (B,L,1) is 1 on real tokens and 0 on padding."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)) * keep) * keep


class _TextBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=TEXT_LN_EPS)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=TEXT_LN_EPS)
        self.mlp = _TextMlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, padding: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, key_padding_mask=padding, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x), keep)


class _TextTransformer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_TextBlock(dim, num_heads, mlp_hidden) for _ in range(depth))


class OfficialTextEncoder(nn.Module):
    """The official TIPS text tower: scaled embeddings + fixed sinusoids → pre-LN blocks → LN → masked mean."""

    def __init__(self, vocab_size: int, width: int, depth: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.width = width
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.transformer = _TextTransformer(width, depth, num_heads, mlp_hidden)
        self.ln_final = nn.LayerNorm(width, eps=TEXT_LN_EPS)

    def forward(self, ids: torch.Tensor, paddings: torch.Tensor) -> torch.Tensor:
        """ids (B,L) int64, paddings (B,L) with 1/True = pad → (B,D) pooled text embedding."""
        padding = paddings.bool()
        keep = (~padding).to(torch.float32).unsqueeze(-1)  # (B, L, 1)
        x = self.token_embedding(ids) * math.sqrt(self.width)
        x = x + sinusoidal_positions(ids.shape[1], self.width).to(x.dtype)
        for block in self.transformer.resblocks:
            x = block(x, padding, keep)
        x = self.ln_final(x)
        return (x * keep).sum(dim=1) / (keep.sum(dim=1) + 1e-8)


# --------------------------------------------------------------------------------------------------------------
# Random weights and the official .npz files
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter with non-trivial random values, in place; returns the model (in eval mode).

    Weights ~ N(0, 1/fan_in) keep activations O(1); LayerNorm weights ≈ 1 ± 0.2; LayerScale γ ∈ [0.5, 1.5)
    (never all ones); CLS, register, mask token and every row of ``pos_embed`` (row 0 included) are non-zero.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std + mean

    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        if leaf == "gamma":
            value = 0.5 + torch.rand(p.shape, generator=gen)
        elif isinstance(owner, nn.LayerNorm):
            value = normal(p.shape, 0.2, 1.0) if leaf == "weight" else normal(p.shape, 0.1)
        elif isinstance(owner, nn.Embedding):
            value = normal(p.shape, 1.0 / math.sqrt(p.shape[1]))  # ×√D in forward → O(1) inputs
        elif name in ("cls_token", "register_tokens", "mask_token"):
            value = normal(p.shape, 1.0)
        elif name == "pos_embed":
            value = normal(p.shape, 0.5)
        elif p.ndim >= 2:
            value = normal(p.shape, 1.0 / math.sqrt(p[0].numel()))
        else:  # biases
            value = normal(p.shape, 0.1)
        p.copy_(value)
    return model.eval()


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's flat state dict as float32 numpy arrays (official key names)."""
    return {k: v.detach().cpu().float().numpy().copy() for k, v in model.state_dict().items()}


def save_official_npz(model: nn.Module, path: str | os.PathLike, temperature: float | None = None) -> str:
    """Write the official PyTorch ``.npz`` layout: flat state dict, plus a scalar ``temperature``."""
    arrays = state_dict_numpy(model)
    if temperature is not None:
        arrays["temperature"] = np.asarray(temperature, dtype=np.float32)
    path = os.fspath(path)
    np.savez(path, **arrays)
    return path if path.endswith(".npz") else path + ".npz"


def load_official_npz(model: nn.Module, path: str | os.PathLike) -> float | None:
    """Strictly load an official ``.npz`` into ``model``; returns its temperature (None when absent)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    temperature = None
    for key in ("temperature", "temperature_contrastive"):
        if key in arrays:
            temperature = float(arrays.pop(key))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True)
    return temperature
