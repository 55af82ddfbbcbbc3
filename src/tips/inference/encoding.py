"""The one image-encoding loop: :func:`encode_images` feeds batches of images through a model and counts them on
one progress bar. ``tips-extract`` and ``tips-predict`` (:func:`tips.inference.extract.run_batches`), the global
probes (``tips_eval.common.encode_images``) and the dense probes' feature cache (``tips_eval.features``) all call
it, so device placement, ``inference_mode``, autocast and progress are done one way.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch
from torch import nn

from .precision import autocast

T = TypeVar("T")


class ImageProgress:
    """One bar over ``total`` images. Its count is the images *encoded* (so it reaches 100 % only when the last
    batch's work is done), its postfix the images *decoded* so far; a skipped image counts as both.

    bar: the tqdm class (a test passes a subclass to read the counts)."""

    def __init__(self, total: int, enabled: bool = True, desc: str = "images", bar: Callable[..., Any] | None = None,
                 leave: bool = True) -> None:
        if bar is None:
            from tqdm.auto import tqdm as bar
        self.bar = bar(total=total, unit="img", desc=desc, disable=not enabled, dynamic_ncols=True, leave=leave)
        self.decoded_count = 0

    def decoded(self, n: int) -> None:
        self.decoded_count += n
        self.bar.set_postfix_str(f"decoded {self.decoded_count}", refresh=False)

    def encoded(self, n: int) -> None:
        self.bar.update(n)

    def skipped(self, n: int = 1) -> None:
        self.decoded(n)
        self.encoded(n)

    def write(self, message: str) -> None:
        import sys

        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "ImageProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def encode_image_features(model: nn.Module, images: torch.Tensor):
    """The default step: ``model.encode_image`` → ImageFeatures (cls_alt (B, D), cls_syn (B, D), patch_tokens
    (B, h, w, D))."""
    return model.encode_image(images)


def encode_images(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, T]],
    progress: ImageProgress | None = None,
    encode: Callable[[nn.Module, torch.Tensor], Any] = encode_image_features,
    dtype: str | torch.dtype = "float32",
) -> Iterator[tuple[Any, T]]:
    """Per batch ``(images (B, 3, H, W), extra)``: move the images to the model's device, run ``encode(model,
    images)`` under ``inference_mode`` and autocast at ``dtype``, and yield ``(output, extra)``.

    The batch counts as decoded when it arrives and as encoded once the caller has consumed the output (the
    generator resumes), so a bar never shows work as done before it is.
    """
    device = next(model.parameters()).device
    for images, extra in batches:
        if progress is not None:
            progress.decoded(len(images))
        x = images.to(device, non_blocking=device.type == "cuda")
        with torch.inference_mode(), autocast(device, dtype):
            out = encode(model, x)
        yield out, extra
        if progress is not None:
            progress.encoded(len(images))
