"""transformers' own module names, as ``save_pretrained(save_original_format=False)`` writes them (and as its
modules' ``state_dict()`` gives them), → the names we read: the official image-tower keys and our DPT head's.

By default transformers writes the hub layout instead (official keys under ``vision_encoder.``, see
:mod:`.hf` / :mod:`.hf_dpt`) and renames to these module names only in memory; a folder may hold either.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

StateDict = dict[str, torch.Tensor]

# Tipsv2Vision{Model,Backbone} → official keys; first match wins
_VISION = [
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.(cls_token|mask_token|register_tokens)", r"\1"),
    (r"encoder\.layer\.(\d+)\.attention\.o_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.mlp\.down_proj\.(weight|bias)", r"blocks.\1.mlp.w3.\2"),
    (r"encoder\.layer\.(\d+)\.(norm[12]|mlp\.fc[12])\.(weight|bias)", r"blocks.\1.\2.\3"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
]
# the pieces transformers splits one official tensor into, in the order they are concatenated back
_SPLIT = re.compile(r"encoder\.layer\.(\d+)\.(attention\.[qkv]_proj|mlp\.gate_proj|mlp\.up_proj)\.(weight|bias)")
_FUSED = {"attn.qkv": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
          "mlp.w12": ("mlp.gate_proj", "mlp.up_proj")}  # fmt: skip

# Tipsv2DptNeck as ``neck.``, Tipsv2DptDecoder as ``decoder.`` → our DenseHead names
_DPT = [
    (r"neck\.reassemble_stage\.readout_projects\.(\d+)\.layers\.0\.", r"dpt.reassemble.readout_projects.\1."),
    (r"neck\.reassemble_stage\.layers\.(\d+)\.projection\.", r"dpt.reassemble.out_projections.\1."),
    (r"neck\.reassemble_stage\.layers\.(\d+)\.resize\.", r"dpt.reassemble.resize_layers.\1."),
    (r"neck\.convs\.(\d+)\.", r"dpt.convs.\1."),
    (r"neck\.fusion_stage\.layers\.(\d+)\.projection\.", r"dpt.fusion_blocks.\1.out_conv."),
    (r"neck\.fusion_stage\.layers\.(\d+)\.residual_layer1\.convolution([12])\.", r"dpt.fusion_blocks.\1.residual_unit.conv\2."),
    (r"neck\.fusion_stage\.layers\.(\d+)\.residual_layer2\.convolution([12])\.", r"dpt.fusion_blocks.\1.main_unit.conv\2."),
    (r"decoder\.project\.", "dpt.project."),
    (r"decoder\.head\.", "head."),
]  # fmt: skip


def vision_module_names_to_official(sd: Mapping[str, Any], prefix: str, source: str = "state dict") -> StateDict:
    """The keys under ``prefix`` (e.g. ``"backbone."``) in transformers' Tipsv2Vision module names → official keys:
    q/k/v and SwiGLU gate/up are concatenated back into ``attn.qkv`` / ``mlp.w12``. Other keys are skipped."""
    out: StateDict = {}
    pieces: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        m = _SPLIT.fullmatch(name)
        if m:
            fused = next(f for f, parts in _FUSED.items() if m.group(2) in parts)
            pieces.setdefault((m.group(1), fused, m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _VISION:
            if re.fullmatch(pattern, name):
                out[re.sub(pattern, repl, name)] = value
                break
        else:
            raise KeyError(f"{source}: {key!r} is not a module of transformers' Tipsv2 image tower")
    for (block, fused, leaf), found in pieces.items():
        parts = _FUSED[fused]
        if set(found) != set(parts):
            raise KeyError(f"{source}: block {block} has {sorted(found)} but needs all of {list(parts)} ({leaf})")
        out[f"blocks.{block}.{fused}.{leaf}"] = torch.cat([found[p] for p in parts], dim=0)
    return out


def dpt_module_names_to_ours(sd: Mapping[str, Any], prefix: str = "", source: str = "state dict") -> StateDict:
    """transformers' DPT module names (``neck.…`` / ``decoder.…``, each after ``prefix``, e.g. ``"depth_"`` in a
    ``…ForDensePrediction``) → our DenseHead names; other keys are skipped, a neck / decoder key with no counterpart
    raises naming it."""
    out: StateDict = {}
    for key, value in sd.items():
        if not key.startswith((prefix + "neck.", prefix + "decoder.")):
            continue
        name = key[len(prefix):]
        for pattern, repl in _DPT:
            if re.match(pattern, name):
                out[re.sub(pattern, repl, name, count=1)] = value
                break
        else:
            raise KeyError(f"{source}: {key!r} is not a module of transformers' Tipsv2DptNeck / Tipsv2DptDecoder")
    return out
