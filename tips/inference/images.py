"""Decoded, preprocessed images for the inference jobs: a dataset that never raises on a bad image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from PIL import Image

from ..io.images import DEFAULT_MAX_PIXELS, ImageDecodeError
from ..io.sources import ImageRef, decode_ref


@dataclass
class Decoded:
    """One dataset item: ``image`` (3, H, W) in [0, 1], or None with the ``error`` that made it unreadable."""

    index: int
    id: str
    image: torch.Tensor | None
    error: str | None = None


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
        ref = self.refs[index]
        try:
            image = decode_ref(ref, self.max_pixels)
        except ImageDecodeError as e:
            return Decoded(index, ref.id, None, str(e))
        return Decoded(index, ref.id, self.preprocess(image))


def collate_decoded(items: list[Decoded]) -> list[Decoded]:
    """Keep items as a list: sizes may differ (keep-aspect) and some items are failures."""
    return items
