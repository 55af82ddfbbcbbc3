"""LoRA fine-tuning through peft, with exports that hold merged weights.

Adapters (rank r, scale α/r) go on the image tower's ``attn.qkv`` (one adapter on the fused projection: q, k and
v share its input, so one low-rank update of the fused matrix is the general case and split q/v adapters a
restriction of it), ``attn.proj``, ``mlp.fc1`` / ``mlp.fc2``, and on the text tower's ``attn.out_proj``,
``mlp.c_fc`` / ``mlp.c_proj`` and its packed ``attn.in_proj_weight`` (a bare Parameter that ``target_modules``
cannot reach: peft's ``target_parameters``). Every base weight is frozen; the heads train as usual.

Exports fold the adapters into the weights (:func:`merge_lora`: W + (α/r)·B·A, the plain TIPS names), so every
downstream tool and format reads them unchanged; the adapters alone go beside them (``adapters.safetensors``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from ..io.atomic import atomic_path

VISION_TARGETS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
TEXT_MODULES = r".*resblocks\.\d+\.(attn\.out_proj|mlp\.(c_fc|c_proj))"
TEXT_PARAMETERS = ("in_proj_weight",)
ADAPTERS_FILE = "adapters.safetensors"
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.default\.weight$")


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: list[str] | tuple[str, ...]) -> None:
    """Inject adapters into ``model.vision`` (the listed ``targets``) and ``model.text`` in place, then freeze
    every parameter of ``model`` but the adapters. Call before DDP/FSDP wrapping."""
    peft = _peft()
    LoraConfig, inject_adapter_in_model = peft.LoraConfig, peft.inject_adapter_in_model
    bad = [t for t in targets if t not in VISION_TARGETS]
    if bad or not targets:
        raise ValueError(f"finetune.lora_targets={list(targets)}: expected a non-empty subset of {list(VISION_TARGETS)}")
    alternatives = "|".join(re.escape(VISION_TARGETS[t]) for t in targets)
    vision = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=rf".*blocks\.\d+\.({alternatives})")
    inject_adapter_in_model(vision, model.vision)
    if model.text is not None:
        text = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=TEXT_MODULES,
                          target_parameters=list(TEXT_PARAMETERS))
        inject_adapter_in_model(text, model.text)
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter(name))


def _peft():
    """peft, an optional dependency (the ``finetune`` extra), imported on use with the install command named."""
    import importlib

    try:
        return importlib.import_module("peft")
    except ImportError as e:
        raise ImportError("finetune.lora_rank > 0 needs the optional package 'peft': pip install 'tips[finetune]' "
                          "(or: pip install 'peft>=0.17')") from e


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def merge_lora(state: dict[str, torch.Tensor], rank: int, alpha: float
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(merged, adapters) of a state dict with peft adapters: ``merged`` has the plain model's names with
    W + (α/r)·B·A folded in (computed in float64, stored in W's dtype); ``adapters`` the lora_A / lora_B tensors.

    A Linear's base is ``<m>.base_layer.weight``; a wrapped bare Parameter's is ``<m>.base_layer.<param>``.
    """
    adapters = {k: v for k, v in state.items() if is_adapter(k)}
    plain = {k.replace(".base_layer", ""): v for k, v in state.items() if not is_adapter(k)}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in adapters.items():
        m = _LORA.match(key)
        if m is None:
            raise KeyError(f"{key}: an adapter tensor of an unknown layout (expected <module>.lora_A.default.weight)")
        pairs.setdefault(m["module"], {})[m["ab"]] = value
    scale = alpha / rank
    for module, ab in pairs.items():
        bases = [f"{module}.base_layer.weight"] + [f"{module}.base_layer.{p}" for p in TEXT_PARAMETERS]
        base = next((b for b in bases if b in state), None)
        if base is None or set(ab) != {"A", "B"}:
            raise KeyError(f"adapter {module}: no base weight among {bases} or a missing lora_A / lora_B")
        target = base.replace(".base_layer", "")
        w = state[base]
        delta = ab["B"].double() @ ab["A"].double()
        plain[target] = (w.double() + scale * delta.reshape(w.shape)).to(w.dtype)
    return plain, adapters


def save_adapters(adapters: dict[str, torch.Tensor], folder: str | Path, rank: int, alpha: float,
                  targets: list[str]) -> Path:
    """``adapters.safetensors`` in ``folder`` (atomic); the metadata holds rank, α and the image-tower targets."""
    from safetensors.torch import save_file

    path = Path(folder) / ADAPTERS_FILE
    meta = {"format": "tips-lora", "rank": str(rank), "alpha": str(alpha), "vision_targets": json.dumps(list(targets)),
            "text_targets": json.dumps([TEXT_MODULES, *TEXT_PARAMETERS])}
    with atomic_path(path, ".tmp.safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in adapters.items()}, str(tmp), metadata=meta)
    return path
