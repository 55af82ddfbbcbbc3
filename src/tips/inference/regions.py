"""Region vectors: patch features pooled over a K×K grid of cells, so a text query can find where in an image a
thing is, and the heat map of one query over one image's patches.

The patch features are the value readout (:func:`value_readout`, MaskCLIP's values trick), the ones zero-shot
segmentation compares with text (:mod:`tips.inference.open_vocab`); a region vector is the mean of a cell's features, L2-normalised, so its inner
product with a normalised text embedding is a cosine like any other in an index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.vision import split_tokens


def value_readout(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's "values trick": images (B, 3, H, W) in [0, 1], H and W multiples of the patch → (B, h, w, D).

    All blocks but the last run as usual; in the last block the attention output is replaced by each token's own
    value vector (heads side by side, then ``proj`` and ``ls1``), then ``norm2`` → MLP → ``ls2`` and the final norm.
    CLS tokens are dropped; the features are not normalised.
    """
    vit = model.vision
    x = vit.blocks[:-1](vit.embed(images))  # (B, 2 + N, D) input of the last block
    p = vit.patch_size
    return readout_last_block(model, x, images.shape[-2] // p, images.shape[-1] // p)


def readout_last_block(model: nn.Module, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The value readout from the last block's input x (B, 2 + N, D) → (B, h, w, D); see :func:`value_readout`.
    Callers that also need the ordinary output run ``blocks[:-1]`` once and both last-block variants from x."""
    vit = model.vision
    blk = vit.blocks[-1]
    attn = blk.attn
    normed = blk.norm1(x)
    dim = getattr(attn, "attn_dim", x.shape[-1])
    v = attn.qkv(normed)[..., 2 * dim: 3 * dim]  # (B, 2 + N, D): per-token values, heads side by side
    v = attn.norm(v)
    if getattr(attn, "gate", None) is not None:
        v = v * attn.gate(normed).sigmoid()
    x = x + blk.ls1(attn.proj(v))
    x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    tokens = vit.norm(x)[:, 2:]  # drop CLS1, CLS2
    return tokens.reshape(x.shape[0], h, w, -1)


def grid_edges(n: int, k: int) -> list[int]:
    """k + 1 patch indices splitting ``n`` patches into k cells whose sizes differ by at most one."""
    if not 1 <= k <= n:
        raise ValueError(f"a {k}x{k} region grid needs 1 <= K <= {n} (the patch grid's side); choose a smaller --regions")
    return [round(i * n / k) for i in range(k + 1)]


def region_boxes(h: int, w: int, k: int) -> torch.Tensor:
    """(k·k, 4) cell boxes (x0, y0, x1, y1) as fractions of the image's width and height, row-major."""
    rows, cols = grid_edges(h, k), grid_edges(w, k)
    return torch.tensor([[cols[j] / w, rows[i] / h, cols[j + 1] / w, rows[i + 1] / h]
                         for i in range(k) for j in range(k)], dtype=torch.float32)


def region_vectors(patches: torch.Tensor, k: int) -> torch.Tensor:
    """patches (B, h, w, D) → (B, k·k, D): each cell's mean feature, L2-normalised; cells row-major as in
    :func:`region_boxes`."""
    b, h, w, d = patches.shape
    rows, cols = grid_edges(h, k), grid_edges(w, k)
    cells = [patches[:, rows[i]:rows[i + 1], cols[j]:cols[j + 1]].float().mean(dim=(1, 2))
             for i in range(k) for j in range(k)]
    return F.normalize(torch.stack(cells, dim=1), dim=-1)


def heat_map(patches: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """patches (h, w, D), query (D,) → (h, w) cosine of each patch with the query."""
    return F.normalize(patches.float(), dim=-1) @ F.normalize(query.float(), dim=0)


def encode_regions(model: torch.nn.Module, images: torch.Tensor, k: int) -> torch.Tensor:
    """images (B, 3, H, W) in [0, 1] → (B, k·k, D) region vectors of the value readout (no autograd)."""
    with torch.inference_mode():
        return region_vectors(value_readout(model, images), k)


def encode_with_regions(model: torch.nn.Module, images: torch.Tensor, k: int):
    """One pass for both: images (B, 3, H, W) → (ImageFeatures, regions (B, k·k, D)). The blocks before the last
    run once; the last runs as usual (the features) and as the value readout (the regions)."""
    vit = model.vision
    p = vit.patch_size
    h, w = images.shape[-2] // p, images.shape[-1] // p
    x = vit.blocks[:-1](vit.embed(images))
    features = split_tokens(vit.norm(vit.blocks[-1](x)), h, w)
    return features, region_vectors(readout_last_block(model, x, h, w), k)
