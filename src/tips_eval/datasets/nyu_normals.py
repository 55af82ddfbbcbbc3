"""NYUv2 surface normals in probe3d's layout (the protocol the TIPS papers report).

``nyu-normals:ROOT`` with ROOT holding (probe3d's ``data/`` folder; ``?train=DIR&test=DIR`` to place them elsewhere):

```
ROOT/nyu_geonet/*.mat             train: GeoNet's release of the MarrRevisited normals, one MATLAB v5 file per
                                  frame with img (H, W, 3) float, depth (H, W) metres, norm (H, W, 3) unit normals
ROOT/nyuv2/nyu_depth_v2_labeled.mat   test: the labeled set (HDF5) with images (N, 3, W, H), rawDepths (N, W, H)
ROOT/nyuv2/all_normals.npy        test: Ladicky et al.'s normals (N, H, W, 3). probe3d ships them as a gzip pickle
                                  (all_normals.pklz, FAIR's SSL-benchmark metadata); tips never unpickles a
                                  downloaded file, so convert it once (the error for a .pklz-only folder gives the
                                  one-line command)
ROOT/nyuv2/test_SN40.json         test: the 654 test frames, [{"img": "0001_...", ...}, ...] (1-based index prefix)
```

As probe3d: frames cropped to 480×640, depth beyond 10 m set to 0, GeoNet images restored as
``uint8(img + 2·(122.175, 116.169, 103.508))`` per channel, the train split is every GeoNet file but each 20th
(after dropping the two files probe3d drops from the full 21,183-frame folder: sorted positions 21181 and 6919),
and the frames are centre-cropped to 480×480 (``?crop=full`` keeps 480×640). Valid pixels: depth > 0 and a
non-zero ground-truth normal; the normals of invalid pixels are set to the zero vector. Normals stay in the
frame the files give them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import (
    DatasetFormatError, DatasetInfo, DenseDataset, DenseSample, check_normals, check_split, require_dir, require_file,
)

GEONET_MEAN = (122.175, 116.169, 103.508)
GEONET_DROPPED = (21181, 6919)  # sorted positions probe3d deletes (in this order) when the full folder is present
GEONET_FULL = 21183
MAX_DEPTH = 10.0
FRAME = (480, 640)


CONVERT_PKLZ = (
    "python -c \"import gzip, pickle, numpy as np; np.save('all_normals.npy', "
    "pickle.load(gzip.open('all_normals.pklz', 'rb'), encoding='latin1')['all_normals'])\""
)


def load_test_normals(folder: Path) -> np.ndarray:
    """Ladicky's normals (N, H, W, 3) from ``all_normals.npy`` (memory-mapped; never unpickled)."""
    path = folder / "all_normals.npy"
    if not path.is_file() and (folder / "all_normals.pklz").is_file():
        raise DatasetFormatError(
            folder / "all_normals.pklz",
            "is a pickle, and tips never unpickles a downloaded file (a pickle can run code). Convert it once, in "
            f"{folder}, if you trust its source: {CONVERT_PKLZ}",
        )
    require_file(path, "Ladicky et al.'s normals as a numpy array (N, H, W, 3) (all_normals.npy)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise DatasetFormatError(path, f"not a plain numpy array ({e}); expected (N, H, W, 3) float") from e


def centre_square(array: np.ndarray) -> np.ndarray:
    """(H, W, ...) with W > H → the central (H, H, ...) columns (probe3d: 480×640 → 480×480)."""
    h, w = array.shape[:2]
    left = max(0, (w - h) // 2)
    return array[:, left: left + min(h, w)]


class NYUNormalsDataset(DenseDataset):
    """train: GeoNet .mat frames; val: the 654 labeled test frames with Ladicky et al.'s normals."""

    def __init__(self, root: str | Path, split: str, options: dict[str, str] | None = None) -> None:
        options = options or {}
        self.root = Path(root)
        self.split = check_split(split)
        self.crop = options.get("crop", "center")
        if self.crop not in ("center", "full"):
            raise ValueError(f"nyu-normals ?crop={self.crop!r}: expected center or full")
        if split == "train":
            self._init_geonet(Path(options.get("train", self.root / "nyu_geonet")))
        else:
            self._init_test(Path(options.get("test", self.root / "nyuv2")))
        self.info = DatasetInfo(
            name="nyu-normals", root=str(self.root.resolve()), split=split, depth_min=0.001, depth_max=MAX_DEPTH,
            has_depth=True, has_normals=True, source=self.source,
        )

    # ---------------------------------------------------------------- train (GeoNet)
    def _init_geonet(self, folder: Path) -> None:
        require_dir(folder, "GeoNet's NYU training frames (*.mat with img, depth, norm), probe3d's data/nyu_geonet")
        files = sorted(p.name for p in folder.iterdir() if p.suffix == ".mat")
        if not files:
            raise DatasetFormatError(folder, "no .mat files; expected GeoNet frames with 'img', 'depth', 'norm'")
        if len(files) == GEONET_FULL:
            for i in GEONET_DROPPED:
                del files[i]
        self.files = [folder / f for i, f in enumerate(files) if i % 20 != 0]
        if not self.files:
            raise DatasetFormatError(folder, f"{len(files)} .mat file(s): too few for a train split (every 20th is held out)")
        self.keys = [p.stem for p in self.files]
        self.source = f"GeoNet NYUv2 normals {folder} ({len(self.files)} of {len(files)} frames; every 20th held out)"

    def _read_geonet(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import scipy.io

        path = self.files[index]
        try:
            mat = scipy.io.loadmat(str(path))
        except (ValueError, OSError, NotImplementedError) as e:
            raise DatasetFormatError(path, f"not a MATLAB v5 file ({e}); expected GeoNet's img, depth, norm") from e
        missing = [k for k in ("img", "depth", "norm") if k not in mat]
        if missing:
            raise DatasetFormatError(path, f"no {missing} array(s); expected GeoNet's img (H,W,3), depth (H,W), norm (H,W,3)")
        img, depth, norm = (np.asarray(mat[k])[: FRAME[0], : FRAME[1]] for k in ("img", "depth", "norm"))
        if img.ndim != 3 or img.shape[2] != 3 or depth.shape != img.shape[:2] or norm.shape != img.shape:
            raise DatasetFormatError(path, f"img {img.shape}, depth {depth.shape}, norm {norm.shape}; expected "
                                     "(H, W, 3), (H, W), (H, W, 3)")
        rgb = np.clip(img.astype(np.float64) + 2 * np.asarray(GEONET_MEAN), 0, 255).astype(np.uint8)
        return rgb, depth.astype(np.float32), check_normals(path, norm, "GeoNet norm")

    # ---------------------------------------------------------------- test (labeled set + Ladicky)
    def _init_test(self, folder: Path) -> None:
        import h5py

        self.mat = require_file(folder / "nyu_depth_v2_labeled.mat", "the NYUv2 labeled set (HDF5 images, rawDepths)")
        self.normals_file = folder / "all_normals.npy"
        self._folder = folder
        load_test_normals(folder)  # fail early, naming the file, rather than at the first sample
        listing = require_file(folder / "test_SN40.json", 'the test list [{"img": "0001_..."}, ...]')
        try:
            entries = json.loads(listing.read_text())
            self.indices = [int(str(e["img"]).split("_")[0]) - 1 for e in entries]
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetFormatError(listing, f'expected a JSON list of {{"img": "NNNN_..."}} entries ({e})') from e
        try:
            with h5py.File(self.mat, "r") as f:
                shapes = {k: f[k].shape for k in ("images", "rawDepths") if k in f}
        except OSError as e:
            raise DatasetFormatError(self.mat, f"not an HDF5 (MATLAB v7.3) file ({e})") from e
        if len(shapes.get("images", ())) != 4 or len(shapes.get("rawDepths", ())) != 3:
            raise DatasetFormatError(self.mat, f"datasets {shapes}; expected 'images' (N,3,W,H) and 'rawDepths' (N,W,H)")
        count = shapes["images"][0]
        if not self.indices or min(self.indices) < 0 or max(self.indices) >= count:
            raise DatasetFormatError(listing, f"frame numbers outside 1..{count} (the frames in {self.mat.name})")
        self.keys = [f"nyu-{i + 1:04d}" for i in self.indices]
        self._file, self._pid, self._normals = None, -1, None
        self.source = f"NYUv2 labeled test frames ({len(self.indices)}, {listing.name}) with Ladicky normals"

    def _h5(self):
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file, self._pid = h5py.File(self.mat, "r"), os.getpid()
        return self._file

    def _test_normals(self) -> np.ndarray:
        if self._normals is None:  # memory-mapped; keep only the test frames
            all_normals = load_test_normals(self._folder)
            if all_normals.ndim != 4 or all_normals.shape[-1] != 3 or all_normals.shape[0] <= max(self.indices):
                raise DatasetFormatError(self.normals_file, f"all_normals of shape {all_normals.shape}; expected "
                                         f"(N, H, W, 3) with N > {max(self.indices)}")
            self._normals = {i: np.asarray(all_normals[i]) for i in self.indices}
        return self._normals

    def _read_test(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i = self.indices[index]
        rgb = np.ascontiguousarray(self._h5()["images"][i].transpose(2, 1, 0))  # (H, W, 3)
        depth = np.ascontiguousarray(self._h5()["rawDepths"][i].T).astype(np.float32)
        normals = check_normals(self.normals_file, self._test_normals()[i], "Ladicky all_normals")
        if normals.shape[:2] != depth.shape:
            raise DatasetFormatError(self.normals_file, f"frame {i + 1}: normals {normals.shape[:2]}, depth "
                                     f"{depth.shape} in {self.mat.name}; expected the same (H, W)")
        return rgb, depth, normals

    # ---------------------------------------------------------------- samples
    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rgb, depth, normals = self._read_geonet(index) if self.split == "train" else self._read_test(index)
        depth = np.where(depth > MAX_DEPTH, 0, depth).astype(np.float32)
        normals = np.where((depth > 0)[..., None], normals, 0).astype(np.float32)
        if self.crop == "center":
            rgb, depth, normals = (centre_square(a) for a in (rgb, depth, normals))
        return np.ascontiguousarray(rgb), np.ascontiguousarray(depth), np.ascontiguousarray(normals)

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self._read(index)[0], "RGB")

    def load_depth(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self._read(index)[1])

    def load_normals(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self._read(index)[2]).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int):
        rgb, depth, normals = self._read(index)  # one read for all three
        return DenseSample(self.keys[index], Image.fromarray(rgb, "RGB"), None, torch.from_numpy(depth),
                           torch.from_numpy(normals).permute(2, 0, 1).contiguous())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": -1}
