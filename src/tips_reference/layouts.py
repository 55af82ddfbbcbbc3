"""Writers for the other published TIPS checkpoint layouts from an official PyTorch state dict.

Input state dicts map official PyTorch keys to numpy arrays or tensors. Scenic files are the flattened Flax
tree ('/'-joined); the Hugging Face layout is the official keys prefixed ``vision_encoder.`` / ``text_encoder.``.
Nothing here imports ``tips``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.numpy import save_file

Array = np.ndarray


def _np(sd: Mapping[str, Any]) -> dict[str, Array]:
    return {
        k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)).astype(np.float32)
        for k, v in sd.items()
    }


def _depth(sd: Mapping[str, Array], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return 1 + max(int(m.group(1)) for k in sd if (m := pattern.match(k)))


def _dense(weight: Array, bias: Array) -> dict[str, Array]:
    """torch Linear (out,in) → Flax Dense kernel (in,out)."""
    return {"kernel": weight.T.copy(), "bias": bias.copy()}


def _layer_norm(weight: Array, bias: Array) -> dict[str, Array]:
    return {"scale": weight.copy(), "bias": bias.copy()}


def _attention(in_w: Array, in_b: Array, out_w: Array, out_b: Array, num_heads: int) -> dict[str, Array]:
    """Packed [q;k;v] (3D,D) + out (D,D) → Flax MultiHeadDotProductAttention {query,key,value,out}."""
    d = in_w.shape[1]
    dh = d // num_heads
    tree: dict[str, Array] = {}
    for i, name in enumerate(("query", "key", "value")):
        w, b = in_w[i * d:(i + 1) * d], in_b[i * d:(i + 1) * d]  # (D_out, D_in), (D_out)
        tree[f"{name}/kernel"] = w.T.reshape(d, num_heads, dh).copy()
        tree[f"{name}/bias"] = b.reshape(num_heads, dh).copy()
    tree["out/kernel"] = out_w.T.reshape(num_heads, dh, d).copy()
    tree["out/bias"] = out_b.copy()
    return tree


def _put(out: dict[str, Array], prefix: str, tree: Mapping[str, Array]) -> None:
    for k, v in tree.items():
        out[f"{prefix}/{k}"] = v


def to_scenic_vision(sd: Mapping[str, Any], num_heads: int) -> dict[str, Array]:
    """Official vision state dict → Scenic ``VisionEncoder`` params ('/'-joined keys).

    Scenic has no LayerScale, no mask token and no position row for the CLS tokens, so every γ must be 1
    (raises ValueError otherwise), ``mask_token`` is dropped and ``pos_embed[:,0]`` is folded into ``cls[:,0]``.
    """
    sd = _np(sd)
    gammas = [k for k in sd if k.endswith(".gamma") and not np.all(sd[k] == 1.0)]
    if gammas:
        raise ValueError(f"Scenic has no LayerScale; {gammas[0]} is not all ones")
    d = sd["cls_token"].shape[-1]
    pos = sd["pos_embed"]
    g = int(round((pos.shape[1] - 1) ** 0.5))
    out: dict[str, Array] = {}
    tok = "encoder/ToTokenSequence_0"
    out[f"{tok}/embedding/kernel"] = sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0).copy()  # (p,p,3,D)
    out[f"{tok}/embedding/bias"] = sd["patch_embed.proj.bias"].copy()
    out[f"{tok}/posembed_input"] = pos[:, 1:].reshape(1, g, g, d).copy()
    out[f"{tok}/cls"] = np.concatenate([sd["cls_token"] + pos[:, :1], sd["register_tokens"]], axis=1)  # (1,2,D)
    for i in range(_depth(sd, "blocks.")):
        src, dst = f"blocks.{i}.", f"encoder/transformer/encoderblock_{i}"
        _put(out, f"{dst}/LayerNorm_0", _layer_norm(sd[src + "norm1.weight"], sd[src + "norm1.bias"]))
        _put(out, f"{dst}/MultiHeadDotProductAttention_0", _attention(
            sd[src + "attn.qkv.weight"], sd[src + "attn.qkv.bias"],
            sd[src + "attn.proj.weight"], sd[src + "attn.proj.bias"], num_heads))
        _put(out, f"{dst}/LayerNorm_1", _layer_norm(sd[src + "norm2.weight"], sd[src + "norm2.bias"]))
        if src + "mlp.w12.weight" in sd:
            w12, b12 = sd[src + "mlp.w12.weight"], sd[src + "mlp.w12.bias"]
            h = w12.shape[0] // 2
            ffn = f"{dst}/FFNSwiGluFused_0"
            _put(out, f"{ffn}/Dense_0", _dense(w12[:h], b12[:h]))  # the SiLU branch
            _put(out, f"{ffn}/Dense_1", _dense(w12[h:], b12[h:]))
            _put(out, f"{ffn}/Dense_2", _dense(sd[src + "mlp.w3.weight"], sd[src + "mlp.w3.bias"]))
        else:
            _put(out, f"{dst}/MlpBlock_0/Dense_0", _dense(sd[src + "mlp.fc1.weight"], sd[src + "mlp.fc1.bias"]))
            _put(out, f"{dst}/MlpBlock_0/Dense_1", _dense(sd[src + "mlp.fc2.weight"], sd[src + "mlp.fc2.bias"]))
    _put(out, "encoder/encoder_norm", _layer_norm(sd["norm.weight"], sd["norm.bias"]))
    return out


def to_scenic_text(sd: Mapping[str, Any], temperature: float, num_heads: int) -> dict[str, Array]:
    """Official text state dict → Scenic ``TextEncoder`` params plus ``temperature_contrastive``."""
    sd = _np({k: v for k, v in sd.items() if not k.startswith("temperature")})
    out: dict[str, Array] = {"token_emb/emb_var": sd["token_embedding.weight"].copy()}
    for i in range(_depth(sd, "transformer.resblocks.")):
        src, dst = f"transformer.resblocks.{i}.", f"transformer/encoderblock_{i}"
        _put(out, f"{dst}/LayerNorm_0", _layer_norm(sd[src + "ln_1.weight"], sd[src + "ln_1.bias"]))
        _put(out, f"{dst}/MultiHeadDotProductAttention_0", _attention(
            sd[src + "attn.in_proj_weight"], sd[src + "attn.in_proj_bias"],
            sd[src + "attn.out_proj.weight"], sd[src + "attn.out_proj.bias"], num_heads))
        _put(out, f"{dst}/LayerNorm_1", _layer_norm(sd[src + "ln_2.weight"], sd[src + "ln_2.bias"]))
        _put(out, f"{dst}/MlpBlock_0/Dense_0", _dense(sd[src + "mlp.c_fc.weight"], sd[src + "mlp.c_fc.bias"]))
        _put(out, f"{dst}/MlpBlock_0/Dense_1", _dense(sd[src + "mlp.c_proj.weight"], sd[src + "mlp.c_proj.bias"]))
    _put(out, "text_encoder_norm", _layer_norm(sd["ln_final.weight"], sd["ln_final.bias"]))
    out["temperature_contrastive"] = np.asarray(temperature, dtype=np.float32)
    return out


def save_npz(arrays: Mapping[str, Array], path: str | os.PathLike) -> str:
    """np.savez with the path returned as written (``.npz`` appended when missing)."""
    path = os.fspath(path)
    np.savez(path, **arrays)
    return path if path.endswith(".npz") else path + ".npz"


def to_hf_safetensors(
    vision_sd: Mapping[str, Any],
    text_sd: Mapping[str, Any],
    path: str | os.PathLike,
    config: Mapping[str, Any],
) -> Path:
    """Write a Hugging Face ``google/tipsv2-*`` style folder: ``model.safetensors`` + ``config.json``.

    ``path`` is the folder (created). Tensor keys are the official keys prefixed ``vision_encoder.`` /
    ``text_encoder.``; any ``temperature`` entry of ``text_sd`` is left out (it belongs in ``config``).
    Returns the path of ``model.safetensors``.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"vision_encoder.{k}": v for k, v in _np(vision_sd).items()}
    tensors.update({f"text_encoder.{k}": v for k, v in _np(text_sd).items() if not k.startswith("temperature")})
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(dict(config), indent=2) + "\n")
    return folder / "model.safetensors"
