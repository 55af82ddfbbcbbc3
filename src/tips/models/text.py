"""The TIPS text tower.

x = E[ids]·√D + PE (fixed sinusoids, sin and cos concatenated) → pre-LN blocks with key-padding-masked
attention and a ReLU MLP whose hidden activation and output are zeroed at padded positions → final
LayerNorm → mean over non-padded positions. Parameter names follow the official PyTorch text encoder
(``transformer.resblocks.{i}.attn.in_proj_weight`` …) so official files load without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from .variants import TextConfig


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """(length, width) fixed table: [sin(p·ω_k) | cos(p·ω_k)], ω_k = exp(−k·ln(1e4) / (width/2 − 1)).

    Timescales run geometrically from 1 to 1e4; one zero column is appended when width is odd.
    """
    half = width // 2
    position = torch.arange(length, dtype=torch.float64)[:, None]
    log_increment = math.log(1e4) / max(half - 1, 1)
    inv_timescales = torch.exp(-torch.arange(half, dtype=torch.float64) * log_increment)
    scaled = position * inv_timescales[None, :]  # (L, half)
    table = torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)
    if width % 2:
        table = F.pad(table, (0, 1))
    return table.float()


class TextAttention(nn.Module):
    """Multi-head self-attention over keys that are not padding (SDPA). Packed q/k/v like nn.MultiheadAttention."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, key_allowed: torch.Tensor) -> torch.Tensor:
        """x (B, L, D); key_allowed (B, 1, 1, L) bool, True where a key may be attended → (B, L, D)."""
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=self.heads)  # 3 × (B, H, L, dh)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)"))


class TextMlp(nn.Module):
    """Dense → ReLU → Dense, with hidden activation and output zeroed at padded positions."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)
        for layer in (self.c_fc, self.c_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x (B, L, D); keep (B, L, 1) float, 1 at real tokens."""
        h = F.relu(self.c_fc(x)) * keep
        return self.c_proj(h) * keep


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + Attn(LN1(x)); x + MLP(LN2(x))."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.attn = TextAttention(cfg.width, cfg.heads, cfg.attn_dropout)
        self.ln_2 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = TextMlp(cfg.width, cfg.mlp_hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_allowed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), key_allowed))
        return x + self.drop(self.mlp(self.ln_2(x), keep))


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` (named ``resblocks`` like the official file)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(cfg) for _ in range(cfg.depth)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, key_allowed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, key_allowed, keep, use_reentrant=False)
            else:
                x = block(x, key_allowed, keep)
        return x


class TextTower(nn.Module):
    """Token ids (B, L) + padding (B, L) → pooled text embedding (B, D)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        nn.init.normal_(self.token_embedding.weight, std=cfg.width**-0.5)
        self.register_buffer("positional_embedding", sinusoidal_positions(cfg.max_len, cfg.width), persistent=False)
        self.transformer = Transformer(cfg)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)

    @property
    def width(self) -> int:
        return self.cfg.width

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def check_ids(self, ids: torch.Tensor, padding: torch.Tensor) -> None:
        """Shapes and id range of user input (reads the ids back to the host: kept off the training step)."""
        if ids.ndim != 2 or padding.shape != ids.shape:
            raise ValueError(f"ids {tuple(ids.shape)} and padding {tuple(padding.shape)} must both be (B, L)")
        if ids.shape[1] > self.cfg.max_len:
            raise ValueError(f"text length {ids.shape[1]} exceeds the tower's max_len {self.cfg.max_len}; truncate first")
        if ids.numel() and (int(ids.max()) >= self.cfg.vocab_size or int(ids.min()) < 0):
            raise ValueError(f"token id out of range [0, {self.cfg.vocab_size}): check the tokenizer matches the model")

    def forward_tokens(self, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """ids (B, L) int64, padding (B, L) True where padded → token features after ln_final (B, L, D).

        No checks and no host sync: callers pass ids their own tokenizer made (``forward`` checks user input).
        """
        L = ids.shape[1]
        real = ~padding.to(torch.bool)  # (B, L)
        # A row with no real token would attend to nothing (NaN); let it attend everywhere instead:
        # its pooled output is zero anyway because pooling weights every position by `real`.
        key_allowed = (real | ~real.any(dim=1, keepdim=True))[:, None, None, :]
        keep = real.unsqueeze(-1).to(self.token_embedding.weight.dtype)
        x = self.token_embedding(ids) * math.sqrt(self.cfg.width)
        x = x + self.positional_embedding[:L].to(x.dtype)
        x = self.transformer(x, key_allowed, keep)
        return self.ln_final(x)

    def pool(self, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """ids (B, L), padding (B, L) → masked mean of the final tokens (B, D); no checks, no host sync (training)."""
        x = self.forward_tokens(ids, padding)
        keep = (~padding.to(torch.bool)).unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        return (x * keep).sum(dim=1) / (keep.sum(dim=1) + 1e-8)

    def forward(self, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """ids (B, L), padding (B, L) bool/int (True/1 = padded) → masked mean of final tokens (B, D).

        Checks the ids, then drops trailing columns that are padding in every row: real tokens never attend to
        padding and pooling ignores it, so the result is the same and short captions cost less.
        """
        self.check_ids(ids, padding)
        real = ~padding.to(torch.bool)
        if real.shape[1] and not bool(real[:, -1].any()):
            used = real.any(dim=0).nonzero()
            length = int(used.max()) + 1 if len(used) else 1
            ids, padding = ids[:, :length], padding[:, :length]
        return self.pool(ids, padding)


def build_text_tower(cfg: TextConfig) -> TextTower:
    """Build a randomly initialised TIPS text tower."""
    return TextTower(cfg)
