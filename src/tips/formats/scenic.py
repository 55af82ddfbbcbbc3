"""Scenic/JAX ``.npz`` (the official JAX checkpoints): flattened Flax trees, '/'-joined, converted to our names."""

from __future__ import annotations

import re
from typing import Mapping

import torch

from .common import StateDict, count_indices, require_key, split_text_temperature


def _qkv_from_flax(block: Mapping[str, torch.Tensor], prefix: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Flax q/k/v kernels (D, H, dh) and biases (H, dh) → packed (3D, D) weight, (3D) bias, heads."""
    weights, biases = [], []
    for name in ("query", "key", "value"):
        kernel = block[f"{prefix}/{name}/kernel"]
        D, H, dh = kernel.shape
        weights.append(kernel.reshape(D, H * dh).T)
        biases.append(block[f"{prefix}/{name}/bias"].reshape(-1))
    return torch.cat(weights, 0), torch.cat(biases, 0), H


def _scenic_blocks(sd: Mapping[str, torch.Tensor], root: str, names: dict[str, str], source: str) -> tuple[StateDict, int]:
    """Convert Scenic ``{root}/encoderblock_{i}`` trees; ``names`` maps our sub-module names to Flax ones."""
    out: StateDict = {}
    heads = 0
    depth = count_indices(sd, re.escape(root) + r"/encoderblock_(\d+)/")
    for i in range(depth):
        b = {k[len(f"{root}/encoderblock_{i}/"):]: v for k, v in sd.items() if k.startswith(f"{root}/encoderblock_{i}/")}
        p = names["prefix"].format(i=i)
        for ours, flax in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_1")):
            out[f"{p}{names[ours]}.weight"] = b[f"{flax}/scale"]
            out[f"{p}{names[ours]}.bias"] = b[f"{flax}/bias"]
        w, bias, heads = _qkv_from_flax(b, "MultiHeadDotProductAttention_0")
        out[f"{p}{names['qkv_w']}"] = w
        out[f"{p}{names['qkv_b']}"] = bias
        o = b["MultiHeadDotProductAttention_0/out/kernel"]  # (H, dh, D)
        out[f"{p}{names['proj']}.weight"] = o.reshape(-1, o.shape[-1]).T
        out[f"{p}{names['proj']}.bias"] = b["MultiHeadDotProductAttention_0/out/bias"]
        if "FFNSwiGluFused_0/Dense_0/kernel" in b:
            f = "FFNSwiGluFused_0"
            out[f"{p}mlp.fc1.weight"] = torch.cat([b[f"{f}/Dense_0/kernel"].T, b[f"{f}/Dense_1/kernel"].T], 0)
            out[f"{p}mlp.fc1.bias"] = torch.cat([b[f"{f}/Dense_0/bias"], b[f"{f}/Dense_1/bias"]], 0)
            out[f"{p}mlp.fc2.weight"] = b[f"{f}/Dense_2/kernel"].T
            out[f"{p}mlp.fc2.bias"] = b[f"{f}/Dense_2/bias"]
        else:
            for ours, flax in ((names["fc1"], "Dense_0"), (names["fc2"], "Dense_1")):
                out[f"{p}{ours}.weight"] = b[f"MlpBlock_0/{flax}/kernel"].T
                out[f"{p}{ours}.bias"] = b[f"MlpBlock_0/{flax}/bias"]
    if depth == 0:
        raise KeyError(f"{source}: no {root}/encoderblock_0 found")
    return out, heads


_SCENIC_VISION_NAMES = {
    "prefix": "blocks.{i}.", "norm1": "norm1", "norm2": "norm2", "qkv_w": "attn.qkv.weight",
    "qkv_b": "attn.qkv.bias", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2",
}  # fmt: skip
_SCENIC_TEXT_NAMES = {
    "prefix": "transformer.resblocks.{i}.", "norm1": "ln_1", "norm2": "ln_2", "qkv_w": "attn.in_proj_weight",
    "qkv_b": "attn.in_proj_bias", "proj": "attn.out_proj", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj",
}  # fmt: skip


def scenic_vision_to_ours(sd: Mapping[str, torch.Tensor], source: str = "Scenic vision file") -> tuple[StateDict, int]:
    """Scenic vision tree → our names and the head count read from the q kernel. Scenic's ``cls`` (1, 2, D)
    already holds the final CLS values (no position row), it has no LayerScale (γ = 1) and no mask token."""
    t = "encoder/ToTokenSequence_0/"
    out, heads = _scenic_blocks(sd, "encoder/transformer", _SCENIC_VISION_NAMES, source)
    kernel = require_key(sd, t + "embedding/kernel", source)  # (p, p, 3, D)
    out["patch_embed.proj.weight"] = kernel.permute(3, 2, 0, 1).contiguous()
    out["patch_embed.proj.bias"] = sd[t + "embedding/bias"]
    cls = require_key(sd, t + "cls", source)
    out["cls_token"], out["reg_token"] = cls[:, 0:1], cls[:, 1:2]
    pos = require_key(sd, t + "posembed_input", source)  # (1, G, G, D)
    out["pos_embed"] = pos.reshape(1, -1, pos.shape[-1])
    out["norm.weight"] = require_key(sd, "encoder/encoder_norm/scale", source)
    out["norm.bias"] = sd["encoder/encoder_norm/bias"]
    width = kernel.shape[-1]
    out["mask_token"] = torch.zeros(1, width)
    for i in range(count_indices(out, r"blocks\.(\d+)\.")):
        out[f"blocks.{i}.ls1.gamma"] = torch.ones(width)
        out[f"blocks.{i}.ls2.gamma"] = torch.ones(width)
    return out, heads


def scenic_text_to_ours(sd: Mapping[str, torch.Tensor], source: str = "Scenic text file") -> tuple[StateDict, int, float | None]:
    out, heads = _scenic_blocks(sd, "transformer", _SCENIC_TEXT_NAMES, source)
    out["token_embedding.weight"] = require_key(sd, "token_emb/emb_var", source)
    out["ln_final.weight"] = require_key(sd, "text_encoder_norm/scale", source)
    out["ln_final.bias"] = sd["text_encoder_norm/bias"]
    _, tau = split_text_temperature({k: v for k, v in sd.items() if "temperature" in k})
    return out, heads, tau


