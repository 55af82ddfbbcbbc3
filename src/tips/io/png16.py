"""16-bit PNG files of 1 or 3 channels, read and written without loss.

Pillow writes and reads 16-bit *single-channel* PNGs, but reads 16-bit RGB ones as 8-bit and cannot write them;
surface-normal maps need three exact 16-bit channels, so this module encodes and decodes the format itself
(PNG specification: signature, IHDR, zlib-compressed scanlines with per-row filters, IEND).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {1: 0, 3: 2}  # channels → PNG colour type (grey, truecolour)
_CHANNELS = {0: 1, 2: 3}


class PNG16Error(ValueError):
    """The bytes are not a 16-bit grey or RGB PNG this module can decode; the message says why."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png16(array: np.ndarray, level: int = 6) -> bytes:
    """(H, W) or (H, W, 3) uint16 → PNG bytes (bit depth 16, no filter, big-endian samples as PNG requires)."""
    if array.dtype != np.uint16 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected a (H, W) or (H, W, 3) uint16 array, got {array.shape} {array.dtype}")
    channels = 1 if array.ndim == 2 else 3
    h, w = array.shape[:2]
    rows = np.ascontiguousarray(array.reshape(h, w * channels), dtype=">u2").view(np.uint8)  # (H, 2·W·C)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1)  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", w, h, 16, _COLOUR_TYPES[channels], 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + \
        _chunk(b"IEND", b"")


def write_png16(path: str | Path, array: np.ndarray) -> Path:
    path = Path(path)
    path.write_bytes(encode_png16(array))
    return path


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a.astype(np.int16) + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _unfilter(raw: np.ndarray, h: int, stride: int, bpp: int) -> np.ndarray:
    """(H·(1 + stride),) filtered scanlines → (H, stride) uint8 (filters 0–4 of the PNG specification)."""
    lines = raw.reshape(h, stride + 1)
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(h):
        kind, line = int(lines[y, 0]), lines[y, 1:].copy()
        if kind == 1:  # Sub: cumulative sum per byte position within a pixel, modulo 256
            line = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:  # Up
            line += prev
        elif kind in (3, 4):  # Average / Paeth depend on the pixel just decoded: one pixel at a time
            px, up = line.reshape(-1, bpp), prev.reshape(-1, bpp)
            left, upleft = np.zeros(bpp, np.uint8), np.zeros(bpp, np.uint8)
            for x in range(px.shape[0]):
                if kind == 3:
                    px[x] += ((left.astype(np.uint16) + up[x]) // 2).astype(np.uint8)
                else:
                    px[x] += _paeth(left, up[x], upleft).astype(np.uint8)
                left, upleft = px[x], up[x]
            line = px.reshape(-1)
        elif kind != 0:
            raise PNG16Error(f"unknown PNG row filter {kind}")
        out[y] = line
        prev = line
    return out


def decode_png16(data: bytes) -> np.ndarray:
    """PNG bytes of a 16-bit grey or RGB image → (H, W) or (H, W, 3) uint16."""
    if not data.startswith(SIGNATURE):
        raise PNG16Error("not a PNG file (bad signature)")
    pos, header, idat = len(SIGNATURE), None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos: pos + 8])
        body = data[pos + 8: pos + 8 + length]
        if len(body) != length:
            raise PNG16Error(f"truncated {kind.decode(errors='replace')} chunk")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise PNG16Error("no IHDR or IDAT chunk")
    w, h, depth, colour, _, _, interlace = header
    if depth != 16 or colour not in _CHANNELS:
        raise PNG16Error(f"bit depth {depth}, colour type {colour}; expected a 16-bit grey (0) or RGB (2) PNG")
    if interlace:
        raise PNG16Error("interlaced PNGs are not supported; save it without interlacing")
    channels = _CHANNELS[colour]
    stride = w * channels * 2
    try:
        raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    except zlib.error as e:
        raise PNG16Error(f"corrupt image data ({e})") from e
    if raw.size != h * (stride + 1):
        raise PNG16Error(f"{raw.size} bytes of scanlines; expected {h * (stride + 1)} for {w}x{h}")
    rows = _unfilter(raw, h, stride, channels * 2)
    out = rows.view(">u2").astype(np.uint16).reshape(h, w, channels)
    return out[..., 0] if channels == 1 else out


def read_png16(path: str | Path) -> np.ndarray:
    return decode_png16(Path(path).read_bytes())


# ------------------------------------------------------------------ surface-normal maps
NORMALS_ENCODING = "uint16 RGB PNG, channel = round((n + 1) / 2 * 65535) for n in [-1, 1]; (0, 0, 0) = no surface"


def normals_to_uint16(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) float unit normals, zero vector = invalid → (H, W, 3) uint16 (:data:`NORMALS_ENCODING`).

    The invalid code (0, 0, 0) decodes to (−1, −1, −1), never a unit vector, so it cannot collide with a normal.
    """
    valid = np.any(normals != 0, axis=-1, keepdims=True)
    code = np.round((np.clip(normals, -1, 1) + 1) * (65535 / 2)).astype(np.uint16)
    return np.where(valid, code, 0).astype(np.uint16)


def uint16_to_normals(code: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint16 → (H, W, 3) float32 normals re-normalised to unit length; invalid pixels → 0."""
    n = code.astype(np.float32) * np.float32(2 / 65535) - 1
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    valid = np.any(code != 0, axis=-1, keepdims=True)
    return np.where(valid, n / np.maximum(norm, 1e-6), 0).astype(np.float32)
