"""Bytes in and out of requests: images as ``data:`` URLs (never fetched from anywhere), vectors and arrays as
base64 of little-endian values, dense outputs resized to the input's size and drawn as PNGs."""

from __future__ import annotations

import base64
import binascii
import io
import json
import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..inference.open_vocab import resized_argmax
from ..inference.pictures import depth_colours, depth_limits, palette
from ..inference.uploads import UploadError, decode_upload
from .limits import ApiError, too_large

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


def image_from_field(value: object, param: str, max_pixels: int) -> Image.Image:
    """A ``data:image/...;base64,...`` URL (or bare base64) → RGB PIL image; any failure is a 4xx naming ``param``."""
    if not isinstance(value, str):
        raise ApiError(422, f"{param}: expected a data:image/...;base64,... string, got {type(value).__name__}",
                       param, "invalid_type")
    match = DATA_URL.match(value)
    if match is None and re.match(r"^[a-z][a-z0-9+.-]*://", value, re.I):
        raise ApiError(422, f"{param}: images are never fetched from URLs; send the bytes as a data:image/...;base64,"
                       "... URL", param, "url_not_allowed")
    if match is not None and not match.group("b64"):
        raise ApiError(422, f"{param}: only base64 data URLs are read (data:image/png;base64,...)", param,
                       "invalid_image")
    text = value[match.end():] if match else value
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param}: not valid base64", param, "invalid_image") from None
    try:
        return decode_upload(data, max_pixels)
    except UploadError as e:
        if e.reason == "too_large":
            raise ApiError(413, f"{param}: {e.detail} (tips-serve --max-image-pixels)", param, "too_large") from None
        raise ApiError(400, f"{param}: not a readable image ({e.detail})", param, "invalid_image") from None


def check_text(value: object, param: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ApiError(422, f"{param}: expected a string, got {type(value).__name__}", param, "invalid_type")
    if len(value) > max_chars:
        raise too_large(param, len(value), max_chars, "characters", "--max-text-chars")
    if not value.strip():
        raise ApiError(422, f"{param}: an empty text has no embedding; send at least one word", param, "empty_text")
    return value


def b64_array(array: np.ndarray) -> str:
    """An array's values as base64 of little-endian bytes (float32 or int32)."""
    dtype = "<f4" if array.dtype.kind == "f" else "<i4"
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def array_body(array: np.ndarray) -> dict:
    """{"shape", "dtype", "data"}: what a client reads back with ``np.frombuffer(base64.b64decode(data),
    dtype).reshape(shape)``."""
    kind = "float32" if array.dtype.kind == "f" else "int32"
    return {"shape": list(array.shape), "dtype": kind, "data": b64_array(array)}


def to_input_size(task: str, output: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A head's output at the model's resolution (C, R, R) → the input's (H, W): depth (1, H, W) metres, unit normals
    (3, H, W) (bilinear, renormalised), segmentation class ids (H, W) (argmax of the bilinear logits)."""
    if task == "segmentation":
        return resized_argmax(output, size).numpy().astype(np.int32)
    resized = F.interpolate(output[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    if task == "normals":
        resized = F.normalize(resized, dim=0)
    return resized.numpy()


def class_colours(values: np.ndarray, num_classes: int | None) -> np.ndarray:
    """(K, 3) uint8: the fixed palette, long enough for every id in ``values`` (255 = none of these included)."""
    return palette(max(int(num_classes or 0), int(values.max()) + 1 if values.size else 1))


def legend_header(labels: np.ndarray, names: list[str], num_classes: int | None = None) -> str:
    """The ``X-Tips-Legend`` header of a class-id PNG: JSON (ASCII) ``[{"name", "colour": "#rrggbb", "share"}]``
    for every id present in ``labels`` (H, W), largest first, in the colours :func:`png_bytes` draws; an id past
    ``names`` is "none of these" (open-vocab's below-threshold pixels)."""
    colours = class_colours(labels, num_classes if num_classes is not None else len(names))
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(colours))
    rows = [{"name": names[i] if i < len(names) else "none of these",
             "colour": "#" + "".join(f"{int(c):02x}" for c in colours[i]), "share": round(float(counts[i] / labels.size), 4)}
            for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    return json.dumps(rows, ensure_ascii=True, separators=(",", ":"))


def png_bytes(task: str, values: np.ndarray, num_classes: int | None = None) -> bytes:
    """A picture at the array's own size: depth on the colour map (bright = near), normals as (n + 1) / 2 RGB,
    class ids in a fixed palette."""
    if task == "depth":
        d = values[0]
        lo, hi = depth_limits(d)
        rgb = depth_colours((d - lo) / (hi - lo))
    elif task == "normals":
        rgb = (np.clip((values.transpose(1, 2, 0) + 1) / 2, 0, 1) * 255 + 0.5).astype(np.uint8)
    else:
        colours = class_colours(values, num_classes)
        rgb = colours[np.clip(values, 0, len(colours) - 1)]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail_jpeg(image: Image.Image, side: int = 512) -> bytes:
    image = image.copy()
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
