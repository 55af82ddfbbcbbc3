"""Image bytes → pixels: the one decoder of the library, the data jobs and the evaluations.

The size limit is passed with every call and checked against the header before any pixel is decoded; nothing here
changes PIL's process-wide ``Image.MAX_IMAGE_PIXELS`` (threads with different limits would race on it). PIL's own
guard still applies on top, as the application set it: a ``DecompressionBombWarning`` above that number and an
error above twice it (reported here as ``too_large``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's default Image.MAX_IMAGE_PIXELS, as a per-call limit

# What ImageDecodeError.reason can be: "bad_image" (not an image, damaged, or an unsupported mode) or "too_large"
# (more pixels than max_pixels, by the header). Callers that read the bytes themselves use "missing_image".
REASONS = ("bad_image", "too_large", "missing_image")

# A draft request: the smallest (width, height) the caller needs, or a function of the stored (width, height)
# giving it (None = decode at full size).
Draft = tuple[int, int] | Callable[[int, int], tuple[int, int] | None]


class ImageDecodeError(Exception):
    """An image that cannot be used; ``reason`` is one of :data:`REASONS`, ``detail`` says why in words."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_image(data: bytes, *, max_pixels: int | None, draft: Draft | None = None) -> Image.Image:
    """Decode ``data`` (any format PIL reads) with its pixels loaded, in the mode it is stored in.

    max_pixels: refuse images with more pixels (width x height of the header) before decoding; None = no limit
    of ours (PIL's own guard remains). draft: a JPEG is decoded at the largest DCT reduction
    (1/2, 1/4, 1/8) that keeps both sides at least the requested (width, height), in stored orientation (PIL's draft
    mode; exact and deterministic: the same bytes always give the same pixels); other formats decode at full size.
    Raises :class:`ImageDecodeError`.
    """
    with _decode_errors():
        image = _open(data, max_pixels, draft)
        image.load()
    return image


def _open(data: bytes, max_pixels: int | None, draft: Draft | None) -> Image.Image:
    """The image with its header read and the size checked; pixels not decoded yet."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError("too_large", f"{width}x{height} = {width * height} pixels exceeds the limit of "
                                            f"{max_pixels} pixels")
    size = draft(width, height) if callable(draft) else draft
    if size is not None:
        image.draft(None, (max(1, int(size[0])), max(1, int(size[1]))))
    return image


@contextmanager
def _decode_errors() -> Iterator[None]:
    """Every failure of PIL on bad bytes becomes an ImageDecodeError with a reason."""
    try:
        yield
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError("too_large", f"{e} (PIL's own limit, Image.MAX_IMAGE_PIXELS)") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError("bad_image", "not an image (unrecognised file format)") from e
    except Exception as e:  # decoders raise many types on damaged data (OSError, SyntaxError, struct.error, ...)
        raise ImageDecodeError("bad_image", f"{type(e).__name__}: {e}") from e
