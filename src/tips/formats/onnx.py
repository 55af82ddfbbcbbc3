"""ONNX export of both towers (``tips-export SOURCE --format onnx -o DIR``), checked with onnxruntime.

Files written into the output folder (``name`` defaults to ``tips``):

- ``{name}_vision.onnx``: ``images`` (B, 3, H, W) float32 in [0, 1] → ``cls_alt`` (B, D), ``cls_syn`` (B, D),
  ``patch_tokens`` (B, h, w, D). The batch is dynamic; H = W = ``image_size`` are fixed at export (position
  embeddings are resampled to that grid once, at export time);
- ``{name}_text.onnx``: ``ids`` (B, L) int64 and ``padding`` (B, L) bool (True = padded) → ``text`` (B, D),
  not normalised; batch and length dynamic (L ≤ the tower's ``max_len``);
- optionally ``{name}_vision.int8.onnx`` / ``{name}_text.int8.onnx``: onnxruntime dynamic int8 quantisation;
- ``{name}_onnx.json``: image size, patch size, width, temperatures and the tokenizer kind, for consumers.

Tokenisation stays outside the graphs (use ``model.tokenize`` or the tokenizer the checkpoint carries).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io.atomic import atomic_path, write_text_atomic
from .noise import known_noise_filtered
from ..models.tips import TIPS
from .optional import require

OPSET = 18


class VisionGraph(nn.Module):
    """The image tower with a tuple output, the shape ONNX needs: images → (cls_alt, cls_syn, patch_tokens)."""

    def __init__(self, model: TIPS) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.model.encode_image(images)
        return f.cls_alt, f.cls_syn, f.patch_tokens


class TextGraph(nn.Module):
    """The text tower without its Python-side checks and trimming (data-dependent control flow ONNX cannot hold).

    ids (B, L) int64, padding (B, L) bool → masked mean of the final tokens (B, D), as ``TextTower.forward``.
    """

    def __init__(self, model: TIPS) -> None:
        super().__init__()
        if model.text is None:
            raise ValueError("this model has no text tower to export")
        self.text = model.text

    def forward(self, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.text.pool(ids, padding)


def _export(graph: nn.Module, args: tuple, path: Path, names: tuple[list[str], list[str]], dynamic: dict) -> None:
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, args, str(tmp), dynamo=True, input_names=names[0], output_names=names[1],
                          dynamic_shapes=dynamic, opset_version=OPSET, external_data=False, verbose=False)


def write_onnx(
    model: TIPS,
    out: str | os.PathLike,
    name: str | None = None,
    image_size: int | None = None,
    int8: bool = False,
    check: bool = True,
) -> dict[str, Path]:
    """Write the towers as ONNX graphs into ``out`` (see the module docstring); returns {kind: path}.

    image_size: the fixed input side (default: the model's native size). int8: also write onnxruntime
    dynamic-int8 copies. check: run each fp32 graph in onnxruntime and raise if it differs from PyTorch by more
    than 1e-4 (absolute, on a fresh random batch of 3).
    """
    require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = name or "tips"
    size = image_size or model.image_size
    if size % model.patch_size:
        raise ValueError(f"image_size {size} is not a multiple of the patch size {model.patch_size}")
    model = model.float().cpu().eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    paths: dict[str, Path] = {"vision": out / f"{name}_vision.onnx"}
    images = torch.rand(2, 3, size, size)
    _export(VisionGraph(model), (images,), paths["vision"], (["images"], ["cls_alt", "cls_syn", "patch_tokens"]),
            {"images": {0: batch}})
    if model.text is not None:
        paths["text"] = out / f"{name}_text.onnx"
        length = torch.export.Dim("length", min=2, max=model.text.cfg.max_len)
        ids, padding = example_text(model, 2, min(8, model.text.cfg.max_len))
        _export(TextGraph(model), (ids, padding), paths["text"], (["ids", "padding"], ["text"]),
                {"ids": {0: batch, 1: length}, "padding": {0: batch, 1: length}})
    if check:
        for kind, err in check_onnx(model, paths, size).items():
            if err > 1e-4:
                raise RuntimeError(f"{paths[kind]}: onnxruntime differs from PyTorch by {err:.2e} (> 1e-4)")
    if int8:
        quantization = require("onnxruntime.quantization", "int8 ONNX export")
        for kind in list(paths):
            q = out / f"{name}_{kind}.int8.onnx"
            with atomic_path(q, suffix=".onnx") as tmp, known_noise_filtered():
                quantization.quantize_dynamic(str(paths[kind]), str(tmp), weight_type=quantization.QuantType.QInt8)
            paths[f"{kind}_int8"] = q
    meta = {"format": "tips-onnx", "opset": OPSET, "image_size": size, "patch_size": model.patch_size,
            "width": model.width, "temperature": model.temperature, "temperature_syn": model.temperature_syn,
            "tokenizer": None if model.tokenizer is None else model.tokenizer.kind,
            "files": {k: p.name for k, p in paths.items()}}
    paths["config"] = out / f"{name}_onnx.json"
    write_text_atomic(paths["config"], json.dumps(meta, indent=2) + "\n")
    return paths


def example_text(model: TIPS, batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (B, L) and padding (B, L) with row i padded after max(1, L - i) tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.text.cfg.vocab_size, (batch, length), generator=g)
    lengths = torch.tensor([max(1, length - i) for i in range(batch)])
    padding = torch.arange(length)[None, :] >= lengths[:, None]
    return ids, padding


def session(path: str | os.PathLike):
    """An onnxruntime CPU session for ``path``."""
    ort = require("onnxruntime", "running ONNX graphs")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_onnx(model: TIPS, paths: dict[str, Path], image_size: int, batch: int = 3, seed: int = 1) -> dict[str, float]:
    """Max absolute difference between onnxruntime and PyTorch per tower, on a batch other than the export's."""
    g = torch.Generator().manual_seed(seed)
    errors: dict[str, float] = {}
    with torch.inference_mode():
        if "vision" in paths:
            x = torch.rand(batch, 3, image_size, image_size, generator=g)
            got = session(paths["vision"]).run(None, {"images": x.numpy()})
            want = VisionGraph(model)(x)
            errors["vision"] = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(got, want))
        if "text" in paths:
            ids, padding = example_text(model, batch, min(12, model.text.cfg.max_len), seed)
            got = session(paths["text"]).run(None, {"ids": ids.numpy(), "padding": padding.numpy()})[0]
            errors["text"] = float(np.abs(got - model.text(ids, padding).numpy()).max())
    return errors
