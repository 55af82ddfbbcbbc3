"""Frozen features of a dense dataset, extracted once and cached as memory-mapped ``.npy`` arrays.

One cache entry per (checkpoint, dataset split, resolution, layers, final norm, CLS, flip); its folder name ends
in a hash of all of them, and ``meta.json`` beside the arrays spells them out:

    {cache_dir}/{dataset}-{split}-{hash}/
        patch.npy    (N, h, w, L*D) float16   patch tokens of the chosen blocks, concatenated over blocks
        cls.npy      (N, L*D)       float16   CLS1 (cls_alt) of the same blocks      (only when cls=True)
        seg.npy      (N, H, W)      uint8     class ids resized (nearest) to the input resolution (if any)
        depth.npy    (N, H, W)      float32   metres, resized (nearest) to the input resolution (if any)
        normals.npy  (N, H, W, 3)   float16   unit normals, 0 = invalid, resized (nearest) likewise (if any)
        meta.json    keys, checkpoint identity, dataset fingerprint, settings; written last = complete
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import tips
from tips.inference.extract import check_resolution
from tips.inference import encoding
from tips.inference.encoding import ImageProgress
from tips.io import sha256_file
from tips.models import to_rgb

from .datasets import DenseDataset

FORMAT_VERSION = 1
STORAGE_DTYPE = np.float16


@dataclass(frozen=True)
class FeatureSpec:
    """resolution: (H, W) fed to the model; layers: 0-based block indices; norm: final LayerNorm applied to
    every block's tokens; cls: keep CLS1 to concatenate to every patch token; flip: horizontally flipped inputs."""

    resolution: tuple[int, int]
    layers: tuple[int, ...]
    norm: bool
    cls: bool
    flip: bool = False
    dtype: str = "float32"  # compute dtype (autocast) of the image tower

    def to_dict(self) -> dict:
        d = {**asdict(self), "resolution": list(self.resolution), "layers": list(self.layers)}
        if d["dtype"] == "float32":  # full precision keeps the cache keys written before dtype existed
            del d["dtype"]
        return d


def resolve_layers(choice: str, depth: int) -> tuple[int, ...]:
    """``last`` → (depth-1,); ``last4`` → the last four blocks; ``quarters`` → DINOv2 lin.4 / probe3d blocks
    (depth/4-1, depth/2-1, 3depth/4-1, depth-1), e.g. (2, 5, 8, 11) for 12 blocks; ``dpt`` → the DPT heads'
    ⌈k·depth/4⌉ − 1 (the same for 12, 24, 40 blocks); or explicit ``"2,5,8,11"``."""
    if choice == "last":
        return (depth - 1,)
    if choice == "last4":
        return tuple(range(max(0, depth - 4), depth))
    if choice == "quarters":
        return tuple(sorted({max(0, depth * k // 4 - 1) for k in (1, 2, 3, 4)}))
    if choice == "dpt":
        from tips.models import dpt_layers

        return dpt_layers(depth)
    try:
        layers = tuple(int(i) for i in choice.split(","))
    except ValueError:
        raise ValueError(f"layers={choice!r}: expected last, last4, quarters or block indices like 2,5,8,11") from None
    if not layers or min(layers) < 0 or max(layers) >= depth:
        raise ValueError(f"layers={choice!r}: block indices must lie in 0..{depth - 1}")
    return layers


def parse_resolution(text: str | int, patch_size: int) -> tuple[int, int]:
    """``"224"`` → (224, 224); ``"480x640"`` → (H, W). A side that is not a multiple of the patch size is refused,
    naming the nearest valid sizes (as ``tips-extract`` does), instead of being rounded behind the user's back."""
    parts = str(text).lower().split("x")
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"resolution {text!r}: expected N or HxW") from None
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2 or min(sides) <= 0:
        raise ValueError(f"resolution {text!r}: expected N or HxW")
    for side in sides:
        check_resolution(side, patch_size)
    h, w = sides
    return h, w


def checkpoint_identity(model_source: str | None, random_init: str | None = None, seed: int = 0) -> dict:
    """What identifies the weights: a random init by variant and seed, a file or folder by path, size and mtime
    (plus the hash of a folder's config.json), an official model name by name."""
    if random_init is not None:
        return {"kind": "random-init", "variant": random_init, "seed": seed, "torch": torch.__version__}
    path = Path(str(model_source)).expanduser()
    if path.is_file():
        st = path.stat()
        return {"kind": "file", "path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if path.is_dir():
        files = [{"name": p.name, "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
                 for p in sorted(path.iterdir()) if p.is_file()]
        config = path / "config.json"
        digest = sha256_file(config) if config.is_file() else None
        return {"kind": "folder", "path": str(path.resolve()), "files": files, "config_sha256": digest}
    return {"kind": "name", "name": str(model_source)}


def model_identity(model_source: str | None, random_init: str | None = None, seed: int = 0,
                   quantize: str | None = None, dtype: str = "float32") -> tuple[dict, str]:
    """The identity of the weights a run measures (:func:`checkpoint_identity`, plus the int8 mode: other weights)
    and a short label for file names and result tables (``random-tiny_p8``, ``tips-v2-b14``, ``b14-final``)."""
    if random_init:
        identity = checkpoint_identity(None, random_init=random_init, seed=seed)
        label = f"random-{random_init}"
    else:
        identity = checkpoint_identity(model_source)
        path = Path(str(model_source))
        label = str(model_source)
        if path.exists():  # trainer exports are called export/ and final/: name them by their run (and step) too
            label = path.name if path.name not in ("export", "final", "") else f"{path.parent.name}-{path.name}"
    if quantize:  # int8 weights are other weights: their features get their own cache entry
        identity = {**identity, "quantize": quantize}
        label = f"{label}-{quantize}"
    if dtype != "float32":
        label = f"{label}-{dtype}"
    return identity, label


def weights_identity(model: torch.nn.Module) -> dict:
    """Identity of in-memory weights: a SHA-256 over every image-tower tensor (names, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.vision.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return {"kind": "weights", "sha256": digest.hexdigest()}


def image_to_tensor(image: Image.Image, size: tuple[int, int], flip: bool = False) -> torch.Tensor:
    """PIL image → (3, H, W) float32 in [0, 1], bilinear (antialiased) resize as TIPS preprocessing."""
    arr = np.asarray(to_rgb(image), dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
    if tuple(x.shape[1:]) != tuple(size):
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp_(0, 1)
    return x.flip(-1) if flip else x


def resize_target(target: torch.Tensor, size: tuple[int, int], flip: bool = False) -> torch.Tensor:
    """(H, W) label or depth map → (h, w) by nearest neighbour (never mixes classes or invalid depth)."""
    if tuple(target.shape) != tuple(size):
        dtype = target.dtype
        target = F.interpolate(target[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(dtype)
    return target.flip(-1) if flip else target


def resize_normals(normals: torch.Tensor, size: tuple[int, int], flip: bool = False) -> torch.Tensor:
    """(3, H, W) normal map → (3, h, w) by nearest neighbour; a horizontal flip also negates the x component."""
    if tuple(normals.shape[-2:]) != tuple(size):
        normals = F.interpolate(normals[None].float(), size=size, mode="nearest-exact")[0]
    if flip:
        normals = normals.flip(-1) * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
    return normals


@torch.no_grad()
def compute_features(model: tips.TIPS, images: torch.Tensor, spec: FeatureSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """images (B, 3, H, W) in [0, 1] → patch (B, h, w, L*D) and CLS1 (B, L*D) or None, float32."""
    with tips.autocast(images.device, spec.dtype):
        outs = model.vision.intermediate_layers(images, list(spec.layers), norm=spec.norm)
    patch = torch.cat([o.patch_tokens for o in outs], dim=-1).float()
    cls = torch.cat([o.cls_alt for o in outs], dim=-1).float() if spec.cls else None
    return patch, cls


def _encode_spec(model: tips.TIPS, images: torch.Tensor, spec: FeatureSpec):
    """The cache's step of :func:`tips.inference.encode_images`: images in the weights' dtype → compute_features."""
    return compute_features(model, images.to(next(model.parameters()).dtype), spec)


def probe_input(patch: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
    """patch (B, h, w, C) and optional CLS (B, C) → (B, C or 2C, h, w): CLS broadcast to every patch (DINOv2)."""
    x = patch.permute(0, 3, 1, 2)
    if cls is not None:
        x = torch.cat([x, cls[:, :, None, None].expand(-1, -1, *x.shape[-2:])], dim=1)
    return x


class FeatureCache:
    """Read side of a cache entry; arrays are memory-mapped, so only the rows a batch touches are read."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.keys: list[str] = self.meta["keys"]
        self.patch = np.load(self.path / "patch.npy", mmap_mode="r")
        self.cls = np.load(self.path / "cls.npy", mmap_mode="r") if (self.path / "cls.npy").is_file() else None
        self.seg = np.load(self.path / "seg.npy", mmap_mode="r") if (self.path / "seg.npy").is_file() else None
        self.depth = np.load(self.path / "depth.npy", mmap_mode="r") if (self.path / "depth.npy").is_file() else None
        self.normals = (np.load(self.path / "normals.npy", mmap_mode="r") if (self.path / "normals.npy").is_file()
                        else None)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def channels(self) -> int:
        """Channels of :meth:`inputs`: L*D, doubled when CLS is concatenated."""
        return self.patch.shape[-1] * (2 if self.cls is not None else 1)

    def inputs(self, index: np.ndarray | list[int]) -> torch.Tensor:
        """Rows → probe input (B, C, h, w) float32."""
        index = np.sort(np.asarray(index))
        patch = torch.from_numpy(np.asarray(self.patch[index], dtype=np.float32))
        cls = torch.from_numpy(np.asarray(self.cls[index], dtype=np.float32)) if self.cls is not None else None
        return probe_input(patch, cls)

    def targets(self, name: str, index: np.ndarray | list[int]) -> torch.Tensor:
        """Rows of ``seg`` (B, H, W) int64, ``depth`` (B, H, W) float32 or ``normals`` (B, 3, H, W) float32, in
        the order of :meth:`inputs`."""
        arr = getattr(self, name)
        if arr is None:
            raise ValueError(f"{self.path}: this dataset split has no {name} targets")
        out = torch.from_numpy(np.asarray(arr[np.sort(np.asarray(index))]))
        if name == "normals":
            return out.float().permute(0, 3, 1, 2)
        return out.long() if name == "seg" else out.float()


def default_cache_dir() -> Path:
    return Path(os.environ.get("TIPS_CACHE", Path.home() / ".cache" / "tips")) / "probe-features"


def cache_key(checkpoint: dict, dataset: DenseDataset, spec: FeatureSpec) -> tuple[str, dict]:
    record = {"format": FORMAT_VERSION, "storage": np.dtype(STORAGE_DTYPE).name, "checkpoint": checkpoint,
              "dataset": dataset.fingerprint(), "features": spec.to_dict()}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]
    return f"{dataset.info.name}-{dataset.info.split}-{digest}", record


class _Prepared(torch.utils.data.Dataset):
    def __init__(self, dataset: DenseDataset, spec: FeatureSpec) -> None:
        self.dataset, self.spec = dataset, spec

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        s, size, flip = self.dataset[i], self.spec.resolution, self.spec.flip
        seg = resize_target(s.seg.to(torch.uint8), size, flip) if s.seg is not None else None
        depth = resize_target(s.depth, size, flip) if s.depth is not None else None
        normals = resize_normals(s.normals, size, flip).permute(1, 2, 0) if s.normals is not None else None
        return image_to_tensor(s.image, size, flip), seg, depth, normals


def _collate(items: list) -> list:
    return [torch.stack(col) if col[0] is not None else None for col in zip(*items)]


def cached_features(
    model: tips.TIPS,
    checkpoint: dict,
    dataset: DenseDataset,
    spec: FeatureSpec,
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = True,
) -> FeatureCache:
    """The cache entry for these settings, extracting it first when it does not exist yet."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name, record = cache_key(checkpoint, dataset, spec)
    final = cache_dir / name
    if (final / "meta.json").is_file():
        return FeatureCache(final)
    tmp = cache_dir / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    H, W = spec.resolution
    h, w = H // model.patch_size, W // model.patch_size
    C, N = model.width * len(spec.layers), len(dataset)
    patch = np.lib.format.open_memmap(tmp / "patch.npy", "w+", STORAGE_DTYPE, (N, h, w, C))
    cls = np.lib.format.open_memmap(tmp / "cls.npy", "w+", STORAGE_DTYPE, (N, C)) if spec.cls else None
    seg = np.lib.format.open_memmap(tmp / "seg.npy", "w+", np.uint8, (N, H, W)) if dataset.info.has_seg else None
    depth = np.lib.format.open_memmap(tmp / "depth.npy", "w+", np.float32, (N, H, W)) if dataset.info.has_depth else None
    normals = (np.lib.format.open_memmap(tmp / "normals.npy", "w+", STORAGE_DTYPE, (N, H, W, 3))
               if dataset.info.has_normals else None)
    loader = torch.utils.data.DataLoader(_Prepared(dataset, spec), batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=_collate)
    start = 0
    batches = ((images, (segs, depths, normal_maps)) for images, segs, depths, normal_maps in loader)
    bar = ImageProgress(N, progress, f"features {name}")
    encode = partial(_encode_spec, spec=spec)
    with bar:
        for (p, c), (segs, depths, normal_maps) in encoding.encode_images(model, batches, bar, encode):
            stop = start + p.shape[0]
            patch[start:stop] = p.cpu().numpy().astype(STORAGE_DTYPE)
            if cls is not None:
                cls[start:stop] = c.cpu().numpy().astype(STORAGE_DTYPE)
            if seg is not None:
                seg[start:stop] = segs.numpy()
            if depth is not None:
                depth[start:stop] = depths.numpy()
            if normals is not None:
                normals[start:stop] = normal_maps.numpy().astype(STORAGE_DTYPE)
            start = stop
    for arr in (patch, cls, seg, depth, normals):
        if arr is not None:
            arr.flush()
    del patch, cls, seg, depth, normals
    (tmp / "meta.json").write_text(json.dumps({**record, "keys": dataset.keys, "info": dataset.info.to_dict()}, indent=1))
    try:
        os.replace(tmp, final)
    except OSError:  # another process finished the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
    return FeatureCache(final)
