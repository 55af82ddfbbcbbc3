"""What every dense-probe dataset yields, and the checks that turn a bad file into a readable error."""

from __future__ import annotations

import abc

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tips.io import ImageDecodeError, decode_image
from tips.models import to_rgb

IGNORE_INDEX = 255
SPLITS = ("train", "val")


class DatasetFormatError(ValueError):
    """A dataset file is missing or malformed; the message names the file and what was expected."""

    def __init__(self, path: str | Path, expected: str) -> None:
        super().__init__(f"{path}: {expected}")
        self.path = Path(path)


@dataclass
class DatasetInfo:
    """Metadata of one split.

    class_names / is_object: one entry per class id (empty when the dataset has no segmentation).
    depth_min / depth_max: metres bounding every valid depth (None when the dataset has no depth).
    eigen_crop: the frames are NYU 480x640 frames, so depth metrics may use the Eigen crop.
    source: which files / split definition the samples came from (recorded in every result).
    """

    name: str
    root: str
    split: str
    class_names: list[str] = field(default_factory=list)
    is_object: list[bool] = field(default_factory=list)
    depth_min: float | None = None
    depth_max: float | None = None
    has_seg: bool = False
    has_depth: bool = False
    has_normals: bool = False
    eigen_crop: bool = False
    ignore_index: int = IGNORE_INDEX
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def object_classes(self) -> list[int]:
        return [i for i, obj in enumerate(self.is_object) if obj]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DenseSample:
    """image: PIL RGB; seg: (H, W) int64, 255 = ignore; depth: (H, W) float32 metres, 0 = invalid;
    normals: (3, H, W) float32 unit vectors in the dataset's camera frame, the zero vector = invalid."""

    key: str
    image: Image.Image
    seg: torch.Tensor | None
    depth: torch.Tensor | None
    normals: torch.Tensor | None = None


class DenseDataset(torch.utils.data.Dataset, abc.ABC):
    """Base class: subclasses fill ``info`` and ``keys`` and implement the three loaders."""

    info: DatasetInfo
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    @abc.abstractmethod
    def load_image(self, index: int) -> Image.Image:
        """The RGB image of item ``index``."""

    def load_seg(self, index: int) -> torch.Tensor | None:
        return None

    def load_depth(self, index: int) -> torch.Tensor | None:
        return None

    def load_normals(self, index: int) -> torch.Tensor | None:
        return None

    def __getitem__(self, index: int) -> DenseSample:
        image, seg, depth = self.load_image(index), self.load_seg(index), self.load_depth(index)
        normals = self.load_normals(index)
        targets = (("segmentation", seg), ("depth", depth), ("normals", None if normals is None else normals[0]))
        for what, target in targets:
            if target is not None and tuple(target.shape) != (image.height, image.width):
                raise DatasetFormatError(
                    Path(self.info.root) / self.keys[index],
                    f"{what} map of size {tuple(target.shape)} (H, W); expected the image's {(image.height, image.width)}",
                )
        return DenseSample(self.keys[index], image, seg, depth, normals)

    def fingerprint(self) -> dict:
        """What identifies this split's content for the feature cache."""
        digest = hashlib.sha256("\n".join(self.keys).encode()).hexdigest()[:16]
        out = {"name": self.info.name, "root": self.info.root, "split": self.info.split,
               "count": len(self.keys), "keys_sha256": digest, "source": self.info.source}
        if self.info.has_normals:  # only then: cache entries of datasets without normals keep their keys
            out["normals"] = True
        return out


def check_split(split: str, allowed: tuple[str, ...] = SPLITS) -> str:
    if split not in allowed:
        raise ValueError(f"split {split!r}: expected one of {allowed}")
    return split


def require_file(path: Path, expected: str) -> Path:
    if not path.is_file():
        raise DatasetFormatError(path, f"missing; expected {expected}")
    return path


def require_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise DatasetFormatError(path, f"missing folder; expected {expected}")
    return path


def read_rgb(path: Path) -> Image.Image:
    """Any readable image file → RGB PIL image (decoded now, so errors name the file)."""
    data = require_file(path, "an image file").read_bytes()
    try:
        return to_rgb(decode_image(data, max_pixels=None), in_place=True)  # dataset files are trusted: PIL's own limit only
    except ImageDecodeError as e:
        raise DatasetFormatError(path, f"not a readable image ({e})") from e


def read_label_png(path: Path, modes: tuple[str, ...] = ("L", "P")) -> np.ndarray:
    """8-bit single-channel (or palette-index) PNG → (H, W) uint8 array of class ids."""
    require_file(path, "a single-channel 8-bit PNG of class ids")
    try:
        with Image.open(path) as im:
            if im.mode not in modes:
                raise DatasetFormatError(path, f"mode {im.mode!r}; expected an 8-bit label PNG in mode {modes}")
            return np.asarray(im, dtype=np.uint8).copy()
    except OSError as e:
        raise DatasetFormatError(path, f"not a readable PNG ({e})") from e


def read_normals_png(path: Path) -> torch.Tensor:
    """uint16 RGB PNG (docs/data_format.md §2) → (3, H, W) float32 unit normals, 0 = invalid."""
    from tips.io import PNG16Error, read_png16, uint16_to_normals

    require_file(path, "a 16-bit RGB normals PNG (docs/data_format.md §2)")
    try:
        code = read_png16(path)
    except PNG16Error as e:
        raise DatasetFormatError(path, f"{e}; expected a 16-bit RGB normals PNG") from e
    if code.ndim != 3:
        raise DatasetFormatError(path, f"single-channel image {code.shape}; expected a 16-bit RGB normals PNG")
    return torch.from_numpy(uint16_to_normals(code)).permute(2, 0, 1).contiguous()


def check_normals(path: Path | str, normals: np.ndarray, layout: str) -> np.ndarray:
    """(H, W, 3) float normals read from ``path`` → the same as float32, zero vectors kept as invalid.

    Other vectors must be unit length within 5 % (a file in another layout, e.g. 0..255 colours, is not).
    """
    normals = np.asarray(normals, dtype=np.float32)
    if normals.ndim != 3 or normals.shape[-1] != 3:
        raise DatasetFormatError(path, f"normals of shape {normals.shape}; expected (H, W, 3) ({layout})")
    norm = np.linalg.norm(normals, axis=-1)
    bad = (norm > 0) & ((norm < 0.95) | (norm > 1.05))
    if bad.mean() > 0.01:
        raise DatasetFormatError(path, f"{bad.mean():.0%} of the normals are not unit vectors (median length "
                                 f"{float(np.median(norm[norm > 0])):.3g}); expected unit normals ({layout})")
    return normals


def read_depth_png(path: Path, scale: float) -> torch.Tensor:
    """uint16 PNG → (H, W) float32 metres (value × scale); 0 stays 0 = invalid."""
    require_file(path, "a 16-bit depth PNG (0 = invalid)")
    try:
        with Image.open(path) as im:
            if im.mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
                raise DatasetFormatError(path, f"mode {im.mode!r}; expected a 16-bit single-channel depth PNG")
            arr = np.asarray(im).astype(np.float32)
    except OSError as e:
        raise DatasetFormatError(path, f"not a readable PNG ({e})") from e
    return torch.from_numpy(arr * np.float32(scale))
