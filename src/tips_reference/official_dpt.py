"""An independent, plain re-implementation of the official TIPSv2 DPT decoders and their loader (test ground truth).

Written from the published description of the decoders and their file layouts only, in the plain style of the official PyTorch decoders: NCHW throughout,
explicit concatenation of patch and CLS tokens, one module per official submodule so that the parameter names
are the official state-dict keys (``dpt.reassemble.readout_projects.0.weight`` …, ``head.weight``).

Also here: the official ``get_intermediate_layers(norm=True)`` features of :class:`OfficialVisionEncoder`, the
writers of the two published head layouts (Scenic zip, legacy flat ``.npz``) and a loader with the official
``load_decoder_weights`` semantics (Scenic kernels transposed and the transposed convs rotated 180°; the legacy flat
branch rotates the transposed convs too). Nothing here imports ``tips``.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .official_torch import OfficialVisionEncoder

HEAD_NAMES = {"segmentation": "pixel_segmentation", "depth": "pixel_depth_classif", "normals": "pixel_normals"}
RESIZED = ("dpt.reassemble.resize_layers.0.weight", "dpt.reassemble.resize_layers.1.weight")


def official_layers(depth: int) -> list[int]:
    return {12: [2, 5, 8, 11], 24: [5, 11, 17, 23], 27: [6, 13, 20, 26], 40: [9, 19, 29, 39]}.get(
        depth, [math.ceil(k * depth / 4) - 1 for k in range(1, 5)]
    )


def intermediate_layers(encoder: OfficialVisionEncoder, x: torch.Tensor, layers: list[int], norm: bool = True):
    """[(CLS1 (B, D), patches (B, D, h, w))] after the chosen blocks, final LN applied when ``norm``."""
    b, _, H, W = x.shape
    h, w = H // encoder.patch_size, W // encoder.patch_size
    tokens = encoder.prepare_tokens(x)
    out = []
    for i, block in enumerate(encoder.blocks):
        tokens = block(tokens)
        if i in layers:
            t = encoder.norm(tokens) if norm else tokens
            out.append((t[:, 0], t[:, 2:].transpose(1, 2).reshape(b, -1, h, w)))
    return out


class PreActResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(x))
        y = self.conv2(F.relu(y))
        return x + y


class FeatureFusionBlock(nn.Module):
    def __init__(self, features: int, has_residual: bool) -> None:
        super().__init__()
        self.has_residual = has_residual
        if has_residual:
            self.residual_unit = PreActResidualConvUnit(features)
        self.main_unit = PreActResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1, bias=True)

    def forward(self, x, residual=None):
        if residual is not None:
            if residual.shape != x.shape:
                residual = F.interpolate(residual, size=x.shape[2:], mode="bilinear", align_corners=False)
            x = x + self.residual_unit(residual)
        x = self.main_unit(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class ReassembleBlocks(nn.Module):
    def __init__(self, embed_dim: int, out_channels: list[int]) -> None:
        super().__init__()
        self.out_projections = nn.ModuleList([nn.Conv2d(embed_dim, c, 1) for c in out_channels])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4, padding=0),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2, padding=0),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1),
        ])
        self.readout_projects = nn.ModuleList([nn.Linear(2 * embed_dim, embed_dim) for _ in out_channels])

    def forward(self, features):
        out = []
        for i, (cls_token, x) in enumerate(features):
            b, d, h, w = x.shape
            flat = x.flatten(2).transpose(1, 2)  # (B, N, D)
            readout = cls_token.unsqueeze(1).expand(-1, flat.shape[1], -1)
            y = F.gelu(self.readout_projects[i](torch.cat([flat, readout], dim=-1)), approximate="tanh")
            x = y.transpose(1, 2).reshape(b, d, h, w)
            x = self.out_projections[i](x)
            x = self.resize_layers[i](x)
            out.append(x)
        return out


class DPT(nn.Module):
    def __init__(self, embed_dim: int, channels: int, post_process_channels: list[int]) -> None:
        super().__init__()
        self.reassemble = ReassembleBlocks(embed_dim, post_process_channels)
        self.convs = nn.ModuleList([nn.Conv2d(c, channels, 3, padding=1, bias=False) for c in post_process_channels])
        self.fusion_blocks = nn.ModuleList([FeatureFusionBlock(channels, has_residual=i > 0) for i in range(4)])
        self.project = nn.Conv2d(channels, channels, 3, padding=1, bias=True)

    def forward(self, features):
        x = self.reassemble(features)
        x = [self.convs[i](f) for i, f in enumerate(x)]
        out = self.fusion_blocks[0](x[-1])
        for i in range(1, 4):
            out = self.fusion_blocks[i](out, residual=x[-(i + 1)])
        return self.project(out)


class OfficialDecoder(nn.Module):
    """task ∈ segmentation / depth / normals; ``forward(features, image_size)`` gives the official outputs:
    logits (B, C, H, W); depth in metres (B, 1, H, W) from the bins; raw normals (B, 3, H, W)."""

    depth_relu = True  # class attributes, so a test can show what the wrong choice would change
    depth_shift = 0.001

    def __init__(self, task: str, embed_dim: int, out: int, channels: int = 256, post=None) -> None:
        super().__init__()
        self.task = task
        post = post or [embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        self.dpt = DPT(embed_dim, channels, post)
        self.head = nn.Linear(channels, out)

    def forward(self, features, image_size=None):
        x = self.dpt(features)
        x = self.head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.task == "depth":
            centres = torch.linspace(0.001, 10.0, x.shape[1])
            p = (F.relu(x) if self.depth_relu else x) + self.depth_shift
            p = p / p.sum(dim=1, keepdim=True)
            x = torch.einsum("bkhw,k->bhw", p, centres).unsqueeze(1)
        if image_size is not None:
            x = F.interpolate(x, size=image_size, mode="bilinear", align_corners=False)
        return x


@torch.no_grad()
def randomize_decoder_(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial random weights: N(0, 1/fan_in) kernels, N(0, 0.1) biases; transposed-conv kernels asymmetric."""
    gen = torch.Generator().manual_seed(seed)
    for _, p in model.named_parameters():
        std = 1.0 / math.sqrt(p[0].numel()) if p.ndim >= 2 else 0.1
        p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def reference_predict(decoder: OfficialDecoder, encoder: OfficialVisionEncoder, images: torch.Tensor):
    """What ``tips``' predict must return: the official outputs at (H, W), normals L2-normalised."""
    feats = intermediate_layers(encoder, images, official_layers(len(encoder.blocks)))
    out = decoder(feats, image_size=tuple(images.shape[-2:]))
    return F.normalize(out, dim=1) if decoder.task == "normals" else out


# ----------------------------------------------------------------------------------------------- layouts
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def _scenic_path(key: str) -> tuple[str, str]:
    """Official PyTorch key → (Scenic module path, leaf): the inverse of the official loader's key mapping."""
    name, leaf = key.rsplit(".", 1)
    leaf = "kernel" if leaf == "weight" else leaf
    rules = [
        (r"dpt\.reassemble\.out_projections\.(\d)", r"dpt/reassemble_blocks/out_projection_\1"),
        (r"dpt\.reassemble\.readout_projects\.(\d)", r"dpt/reassemble_blocks/readout_projects_\1"),
        (r"dpt\.reassemble\.resize_layers\.(\d)", r"dpt/reassemble_blocks/resize_layers_\1"),
        (r"dpt\.convs\.(\d)", r"dpt/convs_\1"),
        (r"dpt\.fusion_blocks\.(\d)\.out_conv", r"dpt/fusion_blocks_\1/Conv_0"),
        (r"dpt\.project", "dpt/project"),
    ]
    m = re.fullmatch(r"dpt\.fusion_blocks\.(\d)\.(residual_unit|main_unit)\.(conv\d)", name)
    if m:
        block, unit, conv = int(m.group(1)), m.group(2), m.group(3)
        index = 0 if (block == 0 or unit == "residual_unit") else 1
        return f"dpt/fusion_blocks_{block}/PreActResidualConvUnit_{index}/{conv}", leaf
    for pattern, repl in rules:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl, name), leaf
    raise KeyError(key)


def scenic_arrays(decoder: OfficialDecoder, head_name: str | None = None, prefix: str = "") -> dict[str, np.ndarray]:
    """The decoder in the Scenic / Flax layout: kernels (kh, kw, in, out), Dense (in, out), transposed convs
    stored rotated 180° (so that the official loader's rotation gives PyTorch's kernel back)."""
    head_name = head_name or HEAD_NAMES[decoder.task]
    out = {}
    for key, value in decoder.state_dict().items():
        v = _np(value)
        if key.startswith("head."):
            path, leaf = head_name, key.split(".")[-1]
            out[f"{prefix}{path}/{leaf}"] = v.T if leaf == "weight" or v.ndim == 2 else v
            continue
        path, leaf = _scenic_path(key)
        if v.ndim == 4 and key in RESIZED:  # torch (in, out, kh, kw) → flax (kh, kw, in, out), then rotate 180°
            v = np.rot90(v.transpose(2, 3, 0, 1), 2, axes=(0, 1))
        elif v.ndim == 4:  # torch (out, in, kh, kw) → flax (kh, kw, in, out)
            v = v.transpose(2, 3, 1, 0)
        elif v.ndim == 2:
            v = v.T
        out[f"{prefix}{path}/{leaf}"] = np.ascontiguousarray(v)
    return {k.replace("/weight", "/kernel"): v for k, v in out.items()}


def save_scenic_zip(decoder: OfficialDecoder, path: str | os.PathLike, head_name=None, prefix="decoder/") -> str:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a ".zip" name
        np.savez(f, **scenic_arrays(decoder, head_name, prefix))
    return os.fspath(path)


def save_legacy_flat(decoder: OfficialDecoder, path: str | os.PathLike) -> str:
    """The legacy flat PyTorch layout as the official loader reads it: names without ``dpt.``, the task head as
    ``segmentation_head.`` / ``pixel_*.``, transposed-conv kernels stored rotated (the loader rotates them back)."""
    head = "segmentation_head" if decoder.task == "segmentation" else HEAD_NAMES[decoder.task]
    arrays = {}
    for key, value in decoder.state_dict().items():
        v = _np(value)
        if key in RESIZED:
            v = np.ascontiguousarray(np.rot90(v, 2, axes=(2, 3)))
        name = f"{head}.{key[5:]}" if key.startswith("head.") else key[4:]
        arrays[name] = v
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return os.fspath(path)


def load_decoder_weights(decoder: OfficialDecoder, path: str | os.PathLike) -> OfficialDecoder:
    """The official loader's semantics for both layouts (strict)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    sd = {}
    if any("/" in k for k in arrays):
        inverse = {}
        for key in decoder.state_dict():
            if key.startswith("head."):
                continue
            path_, leaf = _scenic_path(key)
            inverse[f"{path_}/{'kernel' if leaf == 'weight' else leaf}"] = key
        for k, v in arrays.items():
            k = k.removeprefix("decoder/")
            module, leaf = k.rsplit("/", 1)
            if "/" not in module:  # the task head at the top level
                sd["head.weight" if leaf == "kernel" else "head.bias"] = torch.from_numpy(v.T.copy() if v.ndim == 2 else v)
                continue
            key = inverse[k]
            if key in RESIZED:
                v = np.rot90(v, 2, axes=(0, 1)).transpose(2, 3, 0, 1)
            elif v.ndim == 4:
                v = v.transpose(3, 2, 0, 1)
            elif v.ndim == 2:
                v = v.T
            sd[key] = torch.from_numpy(np.ascontiguousarray(v))
    else:
        for k, v in arrays.items():
            if k.startswith(("reassemble.", "convs.", "fusion_blocks.", "project.")):
                key = "dpt." + k
            else:
                key = "head." + k.split(".", 1)[1]
            if key in RESIZED:
                v = np.ascontiguousarray(np.rot90(v, 2, axes=(2, 3)))
            sd[key] = torch.from_numpy(v)
    decoder.load_state_dict(sd, strict=True)
    return decoder
