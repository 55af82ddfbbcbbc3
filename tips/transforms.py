"""Image preprocessing as TIPS checkpoints expect it: RGB in [0, 1], no mean/std, bilinear resize."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .io.images import to_rgb

__all__ = ["Preprocess", "pil_to_tensor", "round_to_multiple", "to_rgb"]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image → (3, H, W) float32 in [0, 1]."""
    arr = np.asarray(to_rgb(image), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def round_to_multiple(size: int, multiple: int) -> int:
    return max(multiple, int(round(size / multiple)) * multiple)


class Preprocess:
    """PIL image → (3, H, W) float tensor in [0, 1].

    size: square side (official inference: 448, square resize, bilinear), or with ``keep_aspect`` the length of
    the *shorter* side; the other side is scaled with the aspect ratio and rounded to a multiple of ``patch_size``.
    """

    def __init__(self, size: int, patch_size: int = 14, keep_aspect: bool = False) -> None:
        if size % patch_size:
            raise ValueError(f"resolution {size} is not a multiple of the patch size {patch_size}")
        self.size = size
        self.patch_size = patch_size
        self.keep_aspect = keep_aspect

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(H, W) after resizing a width x height image."""
        if not self.keep_aspect:
            return self.size, self.size
        if height <= width:
            return self.size, round_to_multiple(self.size * width / height, self.patch_size)
        return round_to_multiple(self.size * height / width, self.patch_size), self.size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        x = pil_to_tensor(image)
        H, W = self.output_size(x.shape[2], x.shape[1])
        if (H, W) == tuple(x.shape[1:]):
            return x
        x = F.interpolate(x[None], size=(H, W), mode="bilinear", align_corners=False, antialias=True)[0]
        return x.clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"Preprocess(size={self.size}, patch_size={self.patch_size}, keep_aspect={self.keep_aspect})"
