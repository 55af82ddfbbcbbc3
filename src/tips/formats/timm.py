"""timm image towers: ``vit_{base,large,so400m,giant}_patch14_reg1_tipsv2`` state dicts.

timm-native keys: ``cls_token`` (CLS1, its position already added), ``reg_token`` (CLS2), ``pos_embed``
(1, G², D) without a class slot, ``blocks.{i}.mlp.fc1/fc2`` (SwiGLU packed in ``fc1``). Our image tower *is* such
a timm model plus ``mask_token``; the file we write keeps ``mask_token``, which timm's own ``checkpoint_filter_fn``
drops on load, so one file serves both. Read back by :func:`load_timm` (``.safetensors``, or ``.pth``/``.bin``
through ``torch.load(weights_only=True)``); a file from ``timm.create_model(...).state_dict()`` has no mask
token and gets a zero one.

timm's forward equals ours at the native size only. At any other size (a non-square input included) timm resamples
the position table bicubically (``dynamic_img_size=True``, and its pretrained loader for another ``img_size``),
where TIPS resamples bilinearly with antialiasing, so the tokens differ (max |Δ| ≈ 3e-2 on a tiny random tower at
42×70); run those sizes through tips.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save

from ..io.atomic import write_bytes_atomic, write_json_atomic
from ..models.tips import TIPS
from ..models.variants import ModelConfig
from .headers import read_state_dict  # noqa: F401  (kept importable from here)
from .common import StateDict, build_from_state_dicts, model_config, read_checked, read_json

ARCHITECTURES = {  # (width, depth, ffn) → timm's registered name
    (768, 12, "mlp"): "vit_base_patch14_reg1_tipsv2",
    (1024, 24, "mlp"): "vit_large_patch14_reg1_tipsv2",
    (1152, 27, "mlp"): "vit_so400m_patch14_reg1_tipsv2",
    (1536, 40, "swiglu"): "vit_giant_patch14_reg1_tipsv2",
}


def timm_kwargs(model: TIPS) -> tuple[str, dict[str, Any]]:
    """The registered timm name closest to this tower and the ``create_model`` kwargs that rebuild it exactly."""
    from .hf import mlp_ratio_for

    v = model.cfg.vision
    if v.gelu != "erf":
        raise ValueError("timm's tipsv2 towers use exact (erf) GELU; this model uses the tanh approximation")
    swiglu = v.ffn == "swiglu"
    name = ARCHITECTURES.get((v.width, v.depth, v.ffn), ARCHITECTURES[(1536, 40, "swiglu")] if swiglu else ARCHITECTURES[(768, 12, "mlp")])
    ratio = mlp_ratio_for(v.width, 2 * v.mlp_hidden, False) if swiglu else mlp_ratio_for(v.width, v.mlp_hidden, False)
    kwargs = {"embed_dim": v.width, "depth": v.depth, "num_heads": v.heads, "mlp_ratio": ratio,
              "img_size": model.image_size, "patch_size": v.patch_size}  # fmt: skip
    return name, kwargs


def export_timm(model: TIPS, out_dir: str | Path, name: str = "tips") -> dict[str, Path]:
    """Write ``{name}_timm.safetensors`` (the image tower, timm keys + ``mask_token``) and ``{name}_timm.tips.json``
    (which timm model and kwargs rebuild it; our head count). Load it in timm with
    ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs)``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arch, kwargs = timm_kwargs(model)
    path = out / f"{name}_timm.safetensors"
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.vision.state_dict().items()}
    write_bytes_atomic(path, save(tensors, metadata={"format": "pt"}))
    standard = ARCHITECTURES.get((model.cfg.vision.width, model.cfg.vision.depth, model.cfg.vision.ffn)) == arch
    note = {"format": "tips-timm-sidecar", "timm_model": arch, "create_model_kwargs": {} if standard and kwargs["img_size"] == 448 else kwargs,
            "vision": dataclasses.asdict(model.cfg.vision), "temperature": model.temperature, "temperature_syn": model.temperature_syn}  # fmt: skip
    sidecar = path.with_suffix(".tips.json")
    write_json_atomic(sidecar, note, indent=2)
    return {"weights": path, "sidecar": sidecar}


def is_timm_state_dict(keys: set[str] | list[str]) -> bool:
    keys = set(keys)
    return {"cls_token", "reg_token", "pos_embed"} <= keys


def load_timm(path: Path, heads: int | None = None, sd: StateDict | None = None) -> TIPS:
    """A timm ``vit_*_patch14_reg1_tipsv2`` state dict (ours or timm's own) → :class:`TIPS` (image tower only); the
    sidecar, when present, is checked against the file's header before the model is built."""
    path = Path(path)
    if sd is not None:
        return _read(path, heads, lambda _: sd)
    return read_checked(_read, path, heads)


def read(path: Path, text: Path | None = None, heads: int | None = None) -> TIPS:
    """The timm layout's reader (``READERS["timm"]``); an image tower only, so ``text`` is refused."""
    if text is not None:
        raise ValueError(f"{path}: a timm state dict holds the image tower only; text= does not apply")
    return load_timm(path, heads)


def _read(path: Path, heads: int | None, tensors: Callable[[Path], StateDict]) -> TIPS:
    sd = dict(tensors(path))
    source = str(path)
    if not is_timm_state_dict(sd.keys()):
        raise KeyError(f"{source}: not a timm TIPSv2 state dict (needs cls_token, reg_token, pos_embed); "
                       f"first keys {sorted(sd)[:6]}")  # fmt: skip
    extra = sorted(k for k in sd if k.startswith(("head.", "fc_norm.")))
    if extra:
        raise KeyError(f"{source}: has classifier keys {extra[:4]}; TIPS towers have no head (num_classes=0)")
    sidecar_file = path.with_suffix(".tips.json")
    sidecar = read_json(sidecar_file) if sidecar_file.is_file() else {}
    sd.setdefault("mask_token", torch.zeros(1, sd["cls_token"].shape[-1], dtype=sd["cls_token"].dtype))
    taus = (sidecar.get("temperature"), sidecar.get("temperature_syn"))
    config = None
    if sidecar.get("vision"):
        vision = model_config({"vision": sidecar["vision"]}, sidecar_file, "vision").vision
        config = ModelConfig(vision=dataclasses.replace(vision, heads=heads) if heads else vision)
        source = f"{path} (architecture from {sidecar_file})"
    return build_from_state_dicts(sd, None, taus, heads, None, config, source)


write = export_timm
