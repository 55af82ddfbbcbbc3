"""Image preprocessing as TIPS checkpoints expect it: RGB in [0, 1], no mean/std, bilinear resize."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps


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


def to_rgb(image: Image.Image, *, in_place: bool = False) -> Image.Image:
    """Any PIL image → 8-bit RGB: first frame of animations, EXIF orientation applied, alpha composited on white.

    Handles palette images with transparency, CMYK, 16-bit and 32-bit integer / float grayscale, LA, RGBA.
    in_place: the caller gives ``image`` up (it may be changed and returned), which saves a copy of the pixels;
    otherwise the result never shares pixels with ``image``, which the caller may close.
    """
    if getattr(image, "is_animated", False):
        image.seek(0)
    if in_place:
        ImageOps.exif_transpose(image, in_place=True)
    else:
        image = ImageOps.exif_transpose(image)  # a copy, transposed or not
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        elif mode == "F" and arr.min() >= 0 and arr.max() <= 1:
            lo, hi = 0.0, 1.0
        elif arr.min() >= 0 and arr.max() <= 255:
            lo, hi = 0.0, 255.0
        else:  # unknown range: stretch to the image's own min..max
            lo, hi = float(arr.min()), float(arr.max())
        arr = np.clip((arr - lo) / max(hi - lo, 1e-12), 0, 1)
        return Image.fromarray((arr * 255 + 0.5).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
