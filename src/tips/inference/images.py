"""Decoded, preprocessed images for the inference jobs: a dataset that never raises on a bad image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from PIL import Image

from ..io.images import DEFAULT_MAX_PIXELS, ImageDecodeError
from ..io.sources import ImageRef, decode_ref

# The largest resized image an item may become (pixels): 4096 x 4096, 200 MB as float32. A thin image far under
# max_pixels (20000 x 1) resized with its aspect kept would otherwise ask for gigabytes.
MAX_RESIZED_PIXELS = 4096 * 4096


@dataclass
class Decoded:
    """One dataset item: ``image`` (3, H, W) in [0, 1], or None with the ``error`` that made it unreadable;
    ``photo_size``: the decoded photo's (H, W), so pictures can be drawn at its aspect."""

    index: int
    id: str
    image: torch.Tensor | None
    error: str | None = None
    photo_size: tuple[int, int] | None = None


class ImageDataset(torch.utils.data.Dataset):
    """Map-style dataset of decoded, preprocessed images; never raises on a bad image."""

    def __init__(
        self,
        refs: Sequence[ImageRef],
        preprocess: Callable[[Image.Image], torch.Tensor],
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.refs = list(refs)
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> Decoded:
        """Any failure of one image (decode, an output shape too large, resize, allocation) is this item's
        reason, never the run's end."""
        ref = self.refs[index]
        try:
            image = decode_ref(ref, self.max_pixels)
            out = getattr(self.preprocess, "output_size", None)
            if out is not None:
                h, w = out(*image.size)
                if h * w > MAX_RESIZED_PIXELS:
                    raise ImageDecodeError("too_large", f"{image.size[0]}x{image.size[1]} would be resized to {h}x{w} "
                                           f"= {h * w} pixels, more than {MAX_RESIZED_PIXELS} (an extreme aspect ratio)")
            return Decoded(index, ref.id, self.preprocess(image), photo_size=(image.height, image.width))
        except ImageDecodeError as e:
            return Decoded(index, ref.id, None, str(e))
        except Exception as e:  # noqa: BLE001 - a resize or an allocation of this image only
            return Decoded(index, ref.id, None, f"bad_image: {type(e).__name__}: {str(e)[:200]}")


def collate_decoded(items: list[Decoded]) -> list[Decoded]:
    """Keep items as a list: sizes may differ (keep-aspect) and some items are failures."""
    return items
