"""Images that arrive in memory (a request to ``tips-serve``): decoded with a pixel limit, converted to RGB and
resized the way the inference jobs resize files, so a served result equals the library's on the same image."""

from __future__ import annotations

import torch
from PIL import Image

from ..io.images import ImageDecodeError, decode_image
from ..models.preprocess import Preprocess, to_rgb


class UploadError(ValueError):
    """An uploaded image that cannot be used. ``reason``: ``bad_image`` (not an image, or damaged) or
    ``too_large`` (more pixels than the limit, read from the header before decoding)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def decode_upload(data: bytes, max_pixels: int | None) -> Image.Image:
    """Image bytes (any format PIL reads) → an 8-bit RGB PIL image; raises :class:`UploadError`."""
    try:
        return to_rgb(decode_image(data, max_pixels=max_pixels), in_place=True)
    except ImageDecodeError as e:
        raise UploadError(e.reason, e.detail) from None
    except Exception as e:  # noqa: BLE001 - a damaged file PIL fails on half-way (truncated, bad mode)
        raise UploadError("bad_image", f"{type(e).__name__}: {str(e)[:200]}") from None


def square_tensor(image: Image.Image, resolution: int, patch_size: int) -> torch.Tensor:
    """RGB PIL image → (3, resolution, resolution) float32 in [0, 1]: the square resize of ``tips-extract``,
    ``tips-predict`` and the index's image queries."""
    return Preprocess(resolution, patch_size)(image)
