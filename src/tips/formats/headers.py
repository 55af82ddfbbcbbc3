"""What a weights file says about itself, read without loading it: every tensor's shape and dtype as a ``meta``
tensor (no storage). Readers run once on these (under ``torch.device("meta")``) to compare a config or sidecar
with the weights before anything is allocated, then once on the real tensors.

- ``.safetensors``: the JSON header (the library checks it against the file size);
- ``.npz`` / ``.zip``: each member's ``.npy`` header, read from the first bytes of the member; a member whose
  declared uncompressed size differs from what its header's shape needs (a zip bomb, a header claiming 10¹²
  elements) is refused before it is inflated, and so is a name that occurs twice;
- ``.pth`` / ``.pt`` / ``.bin``: ``torch.load(weights_only=True, mmap=True)``, which maps storages lazily.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

StateDict = dict[str, torch.Tensor]
_HEADER_READ = 1 << 16  # an .npy header is at most 64 KiB (format 2.0 allows more; numpy writes < 4 KiB)


def meta_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def safetensors_header(path: str | os.PathLike) -> StateDict:
    """{key: meta tensor} from a ``.safetensors`` header."""
    with safe_open(str(path), "pt") as f:
        out = {}
        for key in f.keys():
            view = f.get_slice(key)
            out[key] = meta_tensor(tuple(view.get_shape()), _torch_dtype(view.get_dtype(), path, key))
        return out


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}  # fmt: skip


def _torch_dtype(name: str, path, key: str) -> torch.dtype:
    if name not in _ST_DTYPES:
        raise ValueError(f"{path}: key {key!r} has dtype {name}, which tips does not read")
    return _ST_DTYPES[name]


def npz_members(path: str | os.PathLike) -> list[zipfile.ZipInfo]:
    """The ``.npy`` members of a zip / ``.npz``; a name occurring twice is refused (``np.load`` would keep one)."""
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    seen: set[str] = set()
    for info in infos:
        if info.filename in seen:
            raise ValueError(f"{path}: member {info.filename!r} occurs twice; a checkpoint names each array once")
        seen.add(info.filename)
    return infos


def npz_header(path: str | os.PathLike) -> StateDict:
    """{key: meta tensor} from each member's ``.npy`` header, each checked against the member's declared size."""
    out: StateDict = {}
    with zipfile.ZipFile(path) as z:
        for info in npz_members(path):
            key = info.filename.removesuffix(".npy")
            where = f"{path}: member {info.filename!r}"
            with z.open(info) as f:
                try:
                    version = np.lib.format.read_magic(f)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(f, max_header_size=_HEADER_READ)
                except ValueError as e:
                    raise ValueError(f"{where}: not a readable .npy header ({e})") from e
                offset = f.tell()
            if dtype.hasobject or dtype.kind not in "fiub":
                raise ValueError(f"{where}: dtype {dtype} is not a plain numeric array; cannot read without unpickling, and tips never unpickles")
            need = offset + math.prod(shape) * dtype.itemsize
            if info.file_size != need:
                raise ValueError(f"{where}: its header says shape {tuple(shape)} of {dtype} ({need} bytes with the "
                                 f"header), but the zip declares {info.file_size} bytes; the file is corrupt or tampered")  # fmt: skip
            out[key] = meta_tensor(tuple(shape), torch.from_numpy(np.empty(0, dtype.newbyteorder("="))).dtype)
    return out


def torch_header(path: str | os.PathLike) -> StateDict:
    """{key: meta tensor} of a ``torch.save``-d state dict, mapped, never unpickled beyond tensors."""
    sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return {k: meta_tensor(tuple(v.shape), v.dtype) for k, v in sd.items()}


def header(path: str | os.PathLike) -> StateDict:
    """{key: meta tensor} for any weights file tips reads, by suffix."""
    suffix = Path(path).suffix
    if suffix == ".safetensors":
        return safetensors_header(path)
    if suffix in (".npz", ".zip"):
        return npz_header(path)
    if suffix in (".pth", ".pt", ".bin"):
        return torch_header(path)
    raise ValueError(f"{path}: unsupported weights file {suffix!r}")


def header_keys(path: str | os.PathLike) -> list[str]:
    """The keys of a weights file, from its header alone (no shape checks: for telling layouts apart)."""
    suffix = Path(path).suffix
    if suffix in (".npz", ".zip"):
        return [i.filename.removesuffix(".npy") for i in npz_members(path)]
    if suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    return list(header(path))


# --------------------------------------------------------------------------- the tensors themselves
def read_npz(path: str | os.PathLike) -> StateDict:
    """An ``.npz`` file → {key: tensor}; never unpickles (object arrays are refused)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: torch.from_numpy(np.array(f[k])) for k in f.files}
    except ValueError as e:
        raise ValueError(f"{path}: cannot read without unpickling ({e}); only plain numeric arrays are accepted") from e


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """A ``.safetensors`` or a ``torch.save``-d state dict (never unpickled beyond tensors), unwrapped from a
    ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoint if needed."""
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return dict(sd)


def read_tensors(path: str | os.PathLike) -> StateDict:
    """Every tensor of a weights file (``.safetensors``, ``.npz``/``.zip``, ``.pth``/``.bin``), by suffix."""
    return read_npz(path) if Path(path).suffix in (".npz", ".zip") else read_state_dict(path)
