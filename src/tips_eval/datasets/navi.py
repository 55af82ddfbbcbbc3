"""NAVI (Jampani et al. 2023) in its release layout, with normals computed from the depth as probe3d does.

``navi:ROOT`` with ROOT = the extracted ``navi_v1`` folder:

```
ROOT/{object}/{scene}/images/{name}.jpg     scene = multiview_XX_{camera} or wild_set
ROOT/{object}/{scene}/depth/{name}.png      uint16 millimetres, 0 = no object (alignment of the object mesh)
ROOT/{object}/{scene}/annotations.json      [{"filename": "{name}.jpg", "camera": {"focal_length": f (pixels),
                                             ...}, "image_size": [H, W], ...}, ...]
```

Splits as probe3d's: objects with a ``wild_set`` and at least one other scene; ``train`` = the first ⌊0.9·n⌋ of
each object's n sorted multiview scenes; ``val`` = every ``wild_set`` image (probe3d's test).
NAVI ships no normal maps: they come from the depth, back-projected with the image's focal length and the
principal point at the image centre (OpenCV camera frame: x right, y down, z forward), as the normalised cross
product of central differences, turned towards the camera; valid where the pixel and its four neighbours have
depth. probe3d's object-box crop, its downsampling and its ``[::4]`` subsampling are not applied here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import DatasetFormatError, DatasetInfo, DenseDataset, check_split, read_depth_png, read_rgb, require_dir


def normals_from_depth(depth: np.ndarray, focal: float) -> np.ndarray:
    """(H, W) z-depth (0 = invalid) and focal length in pixels → (H, W, 3) unit normals (OpenCV camera frame),
    pointing towards the camera; 0 where the pixel or a 4-neighbour has no depth."""
    h, w = depth.shape
    z = depth.astype(np.float64)
    u, v = np.meshgrid(np.arange(w) + 0.5 - w / 2, np.arange(h) + 0.5 - h / 2)
    points = np.stack([u * z / focal, v * z / focal, z], axis=-1)  # (H, W, 3)
    du = np.zeros_like(points)
    dv = np.zeros_like(points)
    du[:, 1:-1] = points[:, 2:] - points[:, :-2]
    dv[1:-1] = points[2:] - points[:-2]
    n = np.cross(dv, du)
    n *= -np.sign(np.sum(n * points, axis=-1, keepdims=True))  # towards the camera: n · p < 0
    has = z > 0
    valid = np.zeros_like(has)
    valid[1:-1, 1:-1] = has[1:-1, 1:-1] & has[2:, 1:-1] & has[:-2, 1:-1] & has[1:-1, 2:] & has[1:-1, :-2]
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    valid &= norm[..., 0] > 0
    return np.where(valid[..., None], n / np.maximum(norm, 1e-12), 0).astype(np.float32)


class NAVIDataset(DenseDataset):
    """NAVI images with metric depth (metres) and normals from the depth."""

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = require_dir(Path(root), "the extracted NAVI release (navi_v1/{object}/{scene}/images, depth, "
                                "annotations.json)")
        check_split(split)
        self.items: list[tuple[Path, Path, float]] = []  # (image, depth, focal length in pixels)
        for obj in sorted(p for p in self.root.iterdir() if p.is_dir()):
            scenes = sorted(p.name for p in obj.iterdir() if p.is_dir() and (p.name.startswith("multiview")
                                                                             or p.name == "wild_set"))
            multiview = [s for s in scenes if s.startswith("multiview")]
            if "wild_set" not in scenes or not multiview:
                continue
            chosen = multiview[: int(0.9 * len(multiview))] if split == "train" else ["wild_set"]
            for scene in chosen:
                self.items += self._scene_items(obj / scene)
        if not self.items:
            raise DatasetFormatError(self.root, f"no {split} images; expected {{object}}/wild_set and "
                                     "{object}/multiview_* folders with images/, depth/ and annotations.json")
        self.keys = [str(img.relative_to(self.root).with_suffix("")) for img, _, _ in self.items]
        self.info = DatasetInfo(
            name="navi", root=str(self.root.resolve()), split=split, depth_min=0.001, depth_max=10.0,
            has_depth=True, has_normals=True,
            source=f"NAVI release {self.root} ({'multiview train scenes' if split == 'train' else 'wild_set'}, "
                   f"{len(self.items)} images)",
        )

    @staticmethod
    def _scene_items(scene: Path) -> list[tuple[Path, Path, float]]:
        path = scene / "annotations.json"
        expected = 'a JSON list of {"filename": "NNN.jpg", "camera": {"focal_length": f}, ...}'
        try:
            annotations = json.loads(path.read_text())
            focal = {a["filename"]: float(a["camera"]["focal_length"]) for a in annotations}
        except FileNotFoundError:
            raise DatasetFormatError(path, f"missing; expected {expected}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetFormatError(path, f"unreadable ({e}); expected {expected}") from e
        items = []
        for image in sorted((scene / "images").glob("*.jpg")):
            if image.name not in focal:
                raise DatasetFormatError(path, f"no entry for {image.name}; expected one per image in images/")
            items.append((image, scene / "depth" / f"{image.stem}.png", focal[image.name]))
        return items

    def load_image(self, index: int) -> Image.Image:
        return read_rgb(self.items[index][0])

    def load_depth(self, index: int) -> torch.Tensor:
        return read_depth_png(self.items[index][1], 0.001)

    def load_normals(self, index: int) -> torch.Tensor:
        depth = self.load_depth(index).numpy()
        return torch.from_numpy(normals_from_depth(depth, self.items[index][2])).permute(2, 0, 1).contiguous()
