"""DPT head layouts, in and out: official Scenic zips (flattened Flax trees), the legacy flat PyTorch ``.npz``,
and ours (``config.json`` + ``model.safetensors``). Transformers' ``tipsv2_dpt`` folders are :mod:`.hf_dpt`'s.

Every layout is converted to the official PyTorch state-dict names our :class:`~tips.models.dpt.DenseHead` uses,
then loaded strictly: missing or unexpected keys and shape mismatches raise an error naming the key and both
shapes. The architecture (width, per-level channels, fusion width, class / bin count) comes from the shapes, the
task from the task head's name (or ``task=``). Nothing is ever unpickled.

The flip trap: Flax stores transposed-conv kernels so that PyTorch needs them rotated 180° in (kh, kw); the
official loader also rotates them when it reads the legacy flat layout. We read both as the official loader does,
and write the Scenic layout (never the flat one) for the official loader to read back.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from safetensors.torch import save_file

from ..io.atomic import atomic_file, atomic_path, staged_dir, write_json_atomic
from ..models.dpt import DenseHead, DPTConfig

StateDict = dict[str, torch.Tensor]
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "tips-dpt-head"
FORMAT_VERSION = 1

# Scenic task-head names → task; the first per task is what we write.
HEAD_KEYS = {
    "pixel_segmentation": "segmentation",
    "segmentation_head": "segmentation",
    "pixel_depth_classif": "depth",
    "pixel_depth_regress": "depth",
    "pixel_normals": "normals",
}
DEFAULT_HEAD_KEY = {"segmentation": "pixel_segmentation", "depth": "pixel_depth_classif", "normals": "pixel_normals"}
TRANSPOSED = ("dpt.reassemble.resize_layers.0.weight", "dpt.reassemble.resize_layers.1.weight")

# (Scenic module path regex, our module name, kind); kind fixes the kernel conversion.
_SCENIC_MODULES = [
    (r"dpt/reassemble_blocks/out_projection_([0-3])", r"dpt.reassemble.out_projections.\1", "conv"),
    (r"dpt/reassemble_blocks/readout_projects_([0-3])", r"dpt.reassemble.readout_projects.\1", "dense"),
    (r"dpt/reassemble_blocks/resize_layers_([01])", r"dpt.reassemble.resize_layers.\1", "transposed"),
    (r"dpt/reassemble_blocks/resize_layers_(3)", r"dpt.reassemble.resize_layers.\1", "conv"),
    (r"dpt/convs_([0-3])", r"dpt.convs.\1", "conv"),
    (r"dpt/fusion_blocks_([0-3])/Conv_0", r"dpt.fusion_blocks.\1.out_conv", "conv"),
    (r"dpt/project", "dpt.project", "conv"),
]
_UNIT = re.compile(r"dpt/fusion_blocks_([0-3])/PreActResidualConvUnit_([01])/(conv[12])")
_KERNEL_NDIM = {"conv": 4, "transposed": 4, "dense": 2}


# ----------------------------------------------------------------------------------------------- kernel layouts
def _from_flax(kernel: torch.Tensor, kind: str, key: str, source: str) -> torch.Tensor:
    """A Flax kernel → PyTorch: conv (kh, kw, in, out) → (out, in, kh, kw); Dense (in, out) → (out, in);
    transposed conv: rotated 180° in (kh, kw), then (kh, kw, in, out) → (in, out, kh, kw)."""
    if kernel.ndim != _KERNEL_NDIM[kind]:
        raise ValueError(f"{source}: {key} has shape {tuple(kernel.shape)}, expected a {_KERNEL_NDIM[kind]}-D {kind} kernel")
    if kind == "dense":
        return kernel.T.contiguous()
    if kind == "transposed":
        return kernel.flip(0, 1).permute(2, 3, 0, 1).contiguous()
    return kernel.permute(3, 2, 0, 1).contiguous()


def _to_flax(weight: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "dense":
        return weight.T.contiguous()
    if kind == "transposed":
        return weight.permute(2, 3, 0, 1).flip(0, 1).contiguous()
    return weight.permute(2, 3, 1, 0).contiguous()


def _scenic_module(path: str) -> tuple[str, str] | None:
    """A Scenic module path (no leaf) → (our module name, kind), or None when it is not a DPT trunk module."""
    m = _UNIT.fullmatch(path)
    if m:
        block, index, conv = int(m.group(1)), int(m.group(2)), m.group(3)
        if block == 0 and index == 1:
            return None  # block 0 has only its main unit, named _0
        unit = "main_unit" if (block == 0 or index == 1) else "residual_unit"
        return f"dpt.fusion_blocks.{block}.{unit}.{conv}", "conv"
    for pattern, name, kind in _SCENIC_MODULES:
        if re.fullmatch(pattern, path):
            return re.sub(pattern, name, path), kind
    return None


def _kind(name: str) -> str:
    """Conversion kind of one of our module names (inverse lookup for writing)."""
    if name.startswith("dpt.reassemble.readout_projects.") or name == "head":
        return "dense"
    if name + ".weight" in TRANSPOSED:
        return "transposed"
    return "conv"


def _our_to_scenic_path(name: str) -> str:
    m = re.fullmatch(r"dpt\.fusion_blocks\.(\d)\.(main_unit|residual_unit)\.(conv[12])", name)
    if m:
        block = int(m.group(1))
        index = 0 if (block == 0 or m.group(2) == "residual_unit") else 1
        return f"dpt/fusion_blocks_{block}/PreActResidualConvUnit_{index}/{m.group(3)}"
    inverse = [
        (r"dpt\.reassemble\.out_projections\.(\d)", r"dpt/reassemble_blocks/out_projection_\1"),
        (r"dpt\.reassemble\.readout_projects\.(\d)", r"dpt/reassemble_blocks/readout_projects_\1"),
        (r"dpt\.reassemble\.resize_layers\.(\d)", r"dpt/reassemble_blocks/resize_layers_\1"),
        (r"dpt\.convs\.(\d)", r"dpt/convs_\1"),
        (r"dpt\.fusion_blocks\.(\d)\.out_conv", r"dpt/fusion_blocks_\1/Conv_0"),
        (r"dpt\.project", "dpt/project"),
    ]
    for pattern, repl in inverse:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl, name)
    raise KeyError(f"no Scenic name for module {name!r}")


# ----------------------------------------------------------------------------------------------- reading
def read_arrays(path: str | os.PathLike) -> StateDict:
    """A Scenic ``.zip`` / ``.npz`` of ``.npy`` arrays → {key: tensor}; never unpickles."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError(f"{path}: a single array, not a zip / .npz of named arrays")
            return {k: torch.from_numpy(np.array(f[k])) for k in f.files}
    except ValueError as e:
        raise ValueError(f"{path}: cannot read without unpickling ({e}); only plain numeric arrays are accepted") from e


def detect_layout(keys) -> str:
    """'scenic' (a ``/`` in the keys) or 'legacy' (flat official PyTorch names)."""
    keys = list(keys)
    if any("/" in k for k in keys):
        return "scenic"
    if any(k.startswith(("reassemble.", "convs.", "fusion_blocks.", "project.")) for k in keys):
        return "legacy"
    raise ValueError(f"not a DPT head layout (neither Scenic 'dpt/...' nor flat 'reassemble.' keys); first keys: {sorted(keys)[:6]}")


def scenic_to_ours(arrays: Mapping[str, torch.Tensor], source: str = "head file") -> tuple[StateDict, str]:
    """Scenic / Flax arrays (optional leading ``decoder/``) → (our state dict, the task head's Scenic name)."""
    sd: StateDict = {}
    head_keys = set()
    for key, value in arrays.items():
        path, _, leaf = key.removeprefix("decoder/").rpartition("/")
        if leaf not in ("kernel", "bias"):
            raise KeyError(f"{source}: unexpected key {key!r} (leaves are 'kernel' or 'bias')")
        if path in HEAD_KEYS:
            head_keys.add(path)
            name, kind = "head", "dense"
        else:
            found = _scenic_module(path)
            if found is None:
                raise KeyError(f"{source}: unexpected key {key!r}: not a module of the official DPT decoder")
            name, kind = found
        sd[f"{name}.{'weight' if leaf == 'kernel' else 'bias'}"] = (
            _from_flax(value, kind, key, source) if leaf == "kernel" else value
        )
    if len(head_keys) != 1:
        raise KeyError(f"{source}: expected one task head ({' | '.join(HEAD_KEYS)}), found {sorted(head_keys) or 'none'}")
    return sd, head_keys.pop()


def legacy_to_ours(arrays: Mapping[str, torch.Tensor], source: str = "head file") -> tuple[StateDict, str]:
    """The legacy flat layout → our state dict, read as the official loader reads it (its 180° rotation of the two
    transposed-conv kernels included)."""
    sd: StateDict = {}
    head_keys = set()
    for key, value in arrays.items():
        if key.startswith(("reassemble.", "convs.", "fusion_blocks.", "project.")):
            name = "dpt." + key
        else:
            prefix, _, rest = key.partition(".")
            if prefix not in HEAD_KEYS or rest not in ("weight", "bias"):
                raise KeyError(f"{source}: unexpected key {key!r} in a flat DPT head file")
            head_keys.add(prefix)
            name = "head." + rest
        if name in TRANSPOSED:
            if value.ndim != 4:
                raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, expected a 4-D transposed-conv kernel")
            value = value.flip(2, 3).contiguous()
        sd[name] = value
    if len(head_keys) != 1:
        raise KeyError(f"{source}: expected one task head ({' | '.join(HEAD_KEYS)}), found {sorted(head_keys) or 'none'}")
    return sd, head_keys.pop()


def infer_config(sd: Mapping[str, torch.Tensor], task: str, head_key: str | None, source: str) -> DPTConfig:
    """An official-preset config from the shapes: width, per-level channels, fusion width, output count."""

    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise KeyError(f"{source}: missing key {key!r} (found {len(sd)} tensors)")
        return sd[key]

    width = need("dpt.reassemble.readout_projects.0.weight").shape[0]
    channels = tuple(need(f"dpt.reassemble.out_projections.{i}.weight").shape[0] for i in range(4))
    default = (width // 8, width // 4, width // 2, width)
    return DPTConfig(
        task=task,
        width=width,
        out_channels=need("head.weight").shape[0],
        reassemble=None if channels == default else channels,
        fusion=need("dpt.convs.0.weight").shape[0],
        head_key=head_key,
    )


def load_state_strict(head: DenseHead, sd: Mapping[str, torch.Tensor], source: str) -> DenseHead:
    """Copy ``sd`` into ``head``; a missing, unexpected or mis-shaped key raises an error naming it."""
    want = head.state_dict()
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    if missing or unexpected:
        raise KeyError(f"{source}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]} for a "
                       f"{head.cfg.preset} {head.task} DPT head")
    for key, value in sd.items():
        if tuple(value.shape) != tuple(want[key].shape):
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, the head expects {tuple(want[key].shape)}")
    head.load_state_dict({k: v.to(want[k].dtype) for k, v in sd.items()}, strict=True)
    return head.eval()


def _task(found: str, task: str | None, source: str) -> str:
    if task is not None and task != found:
        raise ValueError(f"{source}: task={task!r} was asked for, but the file holds a {found} head")
    return found


def load_official_head(path: str | os.PathLike, task: str | None = None) -> DenseHead:
    """An official Scenic zip or a legacy flat ``.npz`` → :class:`DenseHead` (official preset); every member's
    declared size and shape is checked from the zip's headers before any member is inflated."""
    from .common import read_checked

    return read_checked(_read_official, Path(path), task)


def _read_official(path: Path, task: str | None, tensors) -> DenseHead:
    source = str(path)
    arrays = tensors(path)
    layout = detect_layout(arrays)
    sd, head_key = (scenic_to_ours if layout == "scenic" else legacy_to_ours)(arrays, source)
    cfg = infer_config(sd, _task(HEAD_KEYS[head_key], task, source), head_key, source)
    return load_state_strict(DenseHead(cfg), sd, source)


def load_pretrained_head(directory: str | os.PathLike, task: str | None = None) -> DenseHead:
    """Our folder (``config.json`` + ``model.safetensors``) → :class:`DenseHead`, the config checked against the
    weights' header before the head is built."""
    from .common import read_checked

    return read_checked(_read_pretrained, Path(directory), task)


def _read_pretrained(directory: Path, task: str | None, tensors) -> DenseHead:
    from .common import read_json, require_field

    cfg_path = directory / CONFIG_NAME
    meta = read_json(cfg_path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: format is {meta.get('format')!r}, not {FORMAT!r} (a DPT head)")
    dpt = require_field(meta, "dpt", cfg_path)
    if not isinstance(dpt, dict):
        raise ValueError(f"{cfg_path}: field 'dpt' must be an object, got {type(dpt).__name__}")
    try:
        cfg = DPTConfig.from_dict(dpt)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cfg_path}: field 'dpt': {e}") from None
    _task(cfg.task, task, str(directory))
    weights = directory / WEIGHTS_NAME
    return load_state_strict(DenseHead(cfg), tensors(weights), f"{weights} (architecture from {cfg_path})")


read_official, read_pretrained = load_official_head, load_pretrained_head


def is_pretrained_head(directory: Path) -> bool:
    try:
        return json.loads((directory / CONFIG_NAME).read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------- writing
def scenic_arrays(head: DenseHead) -> dict[str, np.ndarray]:
    """Our head → the Scenic / Flax arrays of the official zips (``dpt/...`` and the task head at the top)."""
    if head.cfg.preset != "tips":
        raise ValueError(f"only the official ('tips') preset has a Scenic layout; this head is {head.cfg.preset!r}")
    head_key = head.cfg.head_key or DEFAULT_HEAD_KEY[head.task]
    out = {}
    for key, value in head.state_dict().items():
        name, leaf = key.rsplit(".", 1)
        path = head_key if name == "head" else _our_to_scenic_path(name)
        tensor = _to_flax(value, _kind(name)) if leaf == "weight" else value
        out[f"{path}/{'kernel' if leaf == 'weight' else 'bias'}"] = tensor.detach().cpu().float().numpy()
    return out


def _no_model(model) -> None:
    if model is not None:
        raise ValueError("--model does not apply: this head format holds the head only")


def export_official_head(head: DenseHead, out: str | os.PathLike, model=None, name: str | None = None) -> Path:
    """Write ``<out>/<name>.zip`` in the official Scenic layout (default name ``tips_dpt_<task>``); atomic."""
    _no_model(model)
    arrays = scenic_arrays(head)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name or f'tips_dpt_{head.task}'}.zip"
    with atomic_file(path) as f:
        np.savez(f, **arrays)
    return path


def save_pretrained_head(head: DenseHead, out: str | os.PathLike, model=None, name: str | None = None) -> Path:
    """Write our folder ``out`` (``config.json`` + ``model.safetensors``), swapped in whole."""
    _no_model(model)
    if name is not None:
        raise ValueError("--name does not apply to --format pretrained (a folder with fixed file names)")
    out = Path(out)
    with staged_dir(out) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        with atomic_path(tmp / WEIGHTS_NAME) as p:
            save_file(tensors, str(p), metadata={"format": FORMAT})
        write_json_atomic(tmp / CONFIG_NAME, {"format": FORMAT, "version": FORMAT_VERSION, "dpt": head.cfg.to_dict()})
    return out


write_official, write_pretrained = export_official_head, save_pretrained_head
