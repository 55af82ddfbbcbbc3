"""NYU Depth v2, two ways.

``nyu:`` the labeled set, ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5): ``images`` (N, 3, W, H) uint8 and
``depths`` (N, W, H) float metres, stored transposed by MATLAB's column-major layout. The standard 795 / 654
train / test split comes from the official ``splits.mat`` (``trainNdxs`` / ``testNdxs``, 1-based) or a JSON file
``{"train": [...], "test": [...]}`` with the same 1-based indices; this package does not embed the index list,
so one of them must sit beside the ``.mat`` file or be named with ``nyu:/path/to.mat?splits=/path/splits.mat``.

``nyu-raw:`` the raw-frame split DINOv2 trains its depth probe on (~24k frames, test = the 654 labeled images):
the BTS list files ``nyu_train.txt`` / ``nyu_test.txt`` (``rgb_path depth_path focal`` per line, relative to ROOT)
or, without them, ``ROOT/{train,test}/**/rgb_XXXXX.jpg`` beside ``sync_depth_XXXXX.png`` (uint16 millimetres).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import DatasetFormatError, DatasetInfo, DenseDataset, check_split, read_depth_png, read_rgb, require_file

MAT_NAME = "nyu_depth_v2_labeled.mat"
DEPTH_MIN, DEPTH_MAX = 0.001, 10.0  # DINOv2 / probe3d range (metres)


def read_split_indices(path: Path, split: str) -> list[int]:
    """0-based frame indices of ``split`` from ``splits.mat`` (trainNdxs / testNdxs, 1-based) or a JSON file."""
    key = {"train": "train", "val": "test"}[split]
    require_file(path, "the NYUv2 split file (official splits.mat with trainNdxs/testNdxs, or JSON)")
    if path.suffix == ".json":
        try:
            indices = json.loads(path.read_text())[key]
        except (ValueError, KeyError, TypeError) as e:
            expected = 'expected JSON {"train": [...], "test": [...]} of 1-based indices'
            raise DatasetFormatError(path, f"{expected} ({e})") from e
    else:
        name = f"{key}Ndxs"
        try:
            import scipy.io

            indices = scipy.io.loadmat(str(path))[name]
        except NotImplementedError:  # MATLAB v7.3 is HDF5
            import h5py

            with h5py.File(path, "r") as f:
                indices = f[name][()]
        except (KeyError, ValueError) as e:
            raise DatasetFormatError(path, f"no {name!r} array; expected the official splits.mat") from e
    return [int(i) - 1 for i in np.asarray(indices).reshape(-1)]


class NYULabeledDataset(DenseDataset):
    """The 1,449 labeled frames (480x640), 795 train / 654 test (val here)."""

    def __init__(self, path: str | Path, split: str, splits: str | Path | None = None) -> None:
        import h5py

        path = Path(path)
        self.mat = path / MAT_NAME if path.is_dir() else path
        require_file(self.mat, f"{MAT_NAME} (HDF5 with 'images' (N,3,W,H) and 'depths' (N,W,H))")
        split_file = Path(splits) if splits else next(
            (p for p in (self.mat.parent / "splits.mat", self.mat.parent / "splits.json") if p.is_file()),
            self.mat.parent / "splits.mat",
        )
        try:
            with h5py.File(self.mat, "r") as f:
                shapes = {k: f[k].shape for k in ("images", "depths") if k in f}
        except OSError as e:
            raise DatasetFormatError(self.mat, f"not an HDF5 (MATLAB v7.3) file ({e})") from e
        if len(shapes.get("images", ())) != 4 or shapes["images"][1] != 3 or len(shapes.get("depths", ())) != 3:
            raise DatasetFormatError(self.mat, f"datasets {shapes}; expected 'images' (N,3,W,H) and 'depths' (N,W,H)")
        count = shapes["images"][0]
        self.indices = read_split_indices(split_file, check_split(split))
        if not self.indices or min(self.indices) < 0 or max(self.indices) >= count:
            raise DatasetFormatError(split_file, f"indices outside 1..{count} (the frames in {self.mat.name})")
        self.keys = [f"nyu-{i + 1:04d}" for i in self.indices]
        self._file = None
        self._pid = -1
        self.info = DatasetInfo(
            name="nyu", root=str(self.mat.resolve()), split=split, depth_min=DEPTH_MIN, depth_max=DEPTH_MAX,
            has_depth=True, eigen_crop=True,
            source=f"NYUv2 labeled {MAT_NAME}, {'train' if split == 'train' else 'test'} indices from {split_file.name}",
        )

    def _h5(self):
        if self._file is None or self._pid != os.getpid():  # one handle per worker process
            import h5py

            self._file, self._pid = h5py.File(self.mat, "r"), os.getpid()
        return self._file

    def load_image(self, index: int) -> Image.Image:
        chw = self._h5()["images"][self.indices[index]]  # (3, W, H)
        return Image.fromarray(np.ascontiguousarray(chw.transpose(2, 1, 0)), "RGB")

    def load_depth(self, index: int) -> torch.Tensor:
        wh = self._h5()["depths"][self.indices[index]]  # (W, H)
        return torch.from_numpy(np.ascontiguousarray(wh.T).astype(np.float32))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": -1}


class NYURawDataset(DenseDataset):
    """Raw NYUv2 frames as (rgb jpg, uint16 mm depth png) pairs, e.g. DINOv2's 24,231-frame training split."""

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        name = {"train": "train", "val": "test"}[check_split(split)]
        listing = self.root / f"nyu_{name}.txt"
        if listing.is_file():
            pairs = []
            for n, line in enumerate(listing.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) < 2:
                    raise DatasetFormatError(listing, f"line {n}: expected 'rgb_path depth_path [focal]'")
                pairs.append(tuple(self.root / p.lstrip("/") for p in parts[:2]))
            source = f"NYUv2 raw frames listed in {listing.name}"
        else:
            folder = self.root / name
            if not folder.is_dir():
                raise DatasetFormatError(listing, f"missing; expected the BTS list {listing.name} or a folder "
                                         f"{folder} of rgb_XXXXX.jpg + sync_depth_XXXXX.png pairs")
            pairs = [(p, p.with_name(p.name.replace("rgb_", "sync_depth_")).with_suffix(".png"))
                     for p in sorted(folder.rglob("rgb_*.jpg"))]
            source = f"NYUv2 raw frames under {folder}"
        if not pairs:
            raise DatasetFormatError(listing if listing.is_file() else self.root / name, "no (rgb, depth) pairs found")
        self.pairs = pairs
        self.keys = [str(rgb.relative_to(self.root).with_suffix("")) for rgb, _ in pairs]
        self.info = DatasetInfo(
            name="nyu-raw", root=str(self.root.resolve()), split=split, depth_min=DEPTH_MIN, depth_max=DEPTH_MAX,
            has_depth=True, eigen_crop=True, source=f"{source} ({len(pairs)} frames)",
        )

    def load_image(self, index: int) -> Image.Image:
        return read_rgb(self.pairs[index][0])

    def load_depth(self, index: int) -> torch.Tensor:
        return read_depth_png(self.pairs[index][1], 0.001)
