"""Reading and writing the files TIPS works with: image decoding (``images``)."""

from .images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, decode_rgb, to_rgb  # noqa: F401
