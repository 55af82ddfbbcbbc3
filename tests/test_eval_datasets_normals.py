"""Normals in the probe datasets: the scenes probe split, NYUv2 in probe3d's layout (GeoNet train, Ladicky test)
and NAVI in its release layout, on small files built here in the published layouts."""

from __future__ import annotations

import gzip
import json
import math
import pickle

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from tips_pipelines.scenes import main as scenes_main
from tips_pipelines.scenes import render_scene
from tips_eval.datasets import DatasetFormatError, normals_from_depth, open_dataset
from tips.io.png16 import encode_png16, normals_to_uint16


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def max_angle_deg(a: torch.Tensor, b: np.ndarray, valid: np.ndarray) -> float:
    cos = np.clip(np.sum(a.permute(1, 2, 0).numpy()[valid] * b[valid], axis=-1), -1, 1)
    return float(np.degrees(np.arccos(cos)).max())


def test_scenes_probe_split_yields_the_rendered_normals(tmp_path):
    assert scenes_main(["--out", str(tmp_path), "--num-pretrain", "0", "--num-train", "2", "--num-val", "1",
                        "--resolution", "32", "--num-workers", "1"]) == 0
    ds = open_dataset(f"scenes:{tmp_path}", "train")
    assert ds.info.has_normals and ds.fingerprint()["normals"] is True
    sample = ds[1]
    seed = json.loads((tmp_path / "probe" / "train" / "captions.jsonl").read_text().splitlines()[1])["seed"]
    scene = render_scene(seed, 32)
    valid = np.any(scene.normals != 0, axis=-1)
    assert sample.normals.shape == (3, 32, 32) and valid.sum() > 0
    assert max_angle_deg(sample.normals, scene.normals, valid) < 0.1  # float32 storage
    assert torch.all(sample.normals.permute(1, 2, 0)[torch.from_numpy(~valid)] == 0)
    assert torch.equal((sample.normals.abs().sum(0) > 0), sample.depth > 0)  # valid normal ⇔ valid depth


def test_folder_normals_png_in_another_encoding_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "train").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "a.png")
    Image.new("RGB", (4, 4), (128, 128, 255)).save(tmp_path / "train" / "a.normals.png")  # 8-bit colour normals
    ds = open_dataset(f"folder:{tmp_path}", "train")
    assert ds.info.has_normals
    with pytest.raises(DatasetFormatError, match=r"a\.normals\.png.*bit depth 8.*16-bit RGB"):
        ds[0]
    (tmp_path / "train" / "a.normals.png").write_bytes(encode_png16(normals_to_uint16(np.zeros((5, 4, 3)))))
    with pytest.raises(DatasetFormatError, match=r"normals map of size \(5, 4\)"):
        ds[0]


# ------------------------------------------------------------------ NYUv2, probe3d layout
H, W = 6, 10  # small stand-ins for 480x640 frames (the centre crop keeps the central H columns)


def write_geonet(folder, count: int, rng) -> list[dict]:
    folder.mkdir(parents=True)
    frames = []
    for i in range(count):
        rgb = rng.integers(0, 256, (H, W, 3)).astype(np.float64)
        depth = rng.uniform(0.5, 12.0, (H, W))
        depth[0, 0] = 0.0
        norm = unit(rng.normal(size=(H, W, 3)))
        img = rgb - 2 * np.array([122.175, 116.169, 103.508])  # probe3d adds 2·mean back
        scipy.io.savemat(folder / f"living_room_{i:04d}.mat", {"img": img, "depth": depth, "norm": norm})
        frames.append({"rgb": rgb, "depth": depth, "norm": norm})
    return frames


def write_nyu_test(folder, rng, count: int = 5, test=(2, 4)) -> dict:
    folder.mkdir(parents=True)
    images = rng.integers(0, 256, (count, 3, W, H)).astype(np.uint8)  # MATLAB layout (N, 3, W, H)
    raw = rng.uniform(0.5, 12.0, (count, W, H)).astype(np.float32)
    raw[:, 3, 2] = 0.0  # a hole
    with h5py.File(folder / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"], f["rawDepths"] = images, raw
    normals = unit(rng.normal(size=(count, H, W, 3))).astype(np.float32)
    np.save(folder / "all_normals.npy", normals)
    (folder / "test_SN40.json").write_text(json.dumps([{"img": f"{i:04d}_kitchen"} for i in test]))
    return {"images": images, "raw": raw, "normals": normals}


def test_nyu_normals_train_reads_geonet_mat_files_as_probe3d(tmp_path):
    rng = np.random.default_rng(0)
    frames = write_geonet(tmp_path / "nyu_geonet", 41, rng)
    ds = open_dataset(f"nyu-normals:{tmp_path}", "train")
    assert len(ds) == 41 - 3  # positions 0, 20, 40 held out
    assert ds.keys[0] == "living_room_0001" and ds.info.has_normals and ds.info.has_depth
    s = ds[0]
    f = frames[1]
    sl = slice((W - H) // 2, (W - H) // 2 + H)  # centre crop
    assert s.image.size == (H, H)
    np.testing.assert_array_equal(np.asarray(s.image), f["rgb"][:, sl].astype(np.uint8))
    expected_depth = np.where(f["depth"] > 10, 0, f["depth"])[:, sl]
    np.testing.assert_allclose(s.depth.numpy(), expected_depth, rtol=1e-6)
    valid = expected_depth > 0
    assert max_angle_deg(s.normals, f["norm"][:, sl], valid) < 0.1  # float32 storage
    assert torch.all(s.normals[:, torch.from_numpy(~valid)] == 0)
    full = open_dataset(f"nyu-normals:{tmp_path}?crop=full", "train")[0]
    assert full.image.size == (W, H) and full.normals.shape == (3, H, W)


def test_nyu_normals_test_split_is_the_labeled_frames_with_ladicky_normals(tmp_path):
    rng = np.random.default_rng(1)
    ref = write_nyu_test(tmp_path / "nyuv2", rng)
    ds = open_dataset(f"nyu-normals:{tmp_path}?crop=full", "val")
    assert ds.keys == ["nyu-0002", "nyu-0004"]
    s = ds[1]  # frame 4 → index 3
    np.testing.assert_array_equal(np.asarray(s.image), ref["images"][3].transpose(2, 1, 0))
    depth = ref["raw"][3].T
    depth = np.where(depth > 10, 0, depth)
    np.testing.assert_allclose(s.depth.numpy(), depth)
    assert s.depth[2, 3] == 0 and torch.all(s.normals[:, 2, 3] == 0)  # valid mask: depth > 0
    assert max_angle_deg(s.normals, ref["normals"][3], depth > 0) < 0.1  # float32 storage


def test_nyu_normals_errors_name_the_file_and_what_was_expected(tmp_path):
    rng = np.random.default_rng(2)
    write_nyu_test(tmp_path / "nyuv2", rng)
    with pytest.raises(DatasetFormatError, match=r"nyu_geonet.*GeoNet"):
        open_dataset(f"nyu-normals:{tmp_path}", "train")
    (tmp_path / "nyu_geonet").mkdir()
    for i in range(3):
        scipy.io.savemat(tmp_path / "nyu_geonet" / f"f{i}.mat", {"img": np.zeros((H, W, 3)), "depth": np.ones((H, W))})
    with pytest.raises(DatasetFormatError, match=r"f1\.mat: no \['norm'\]"):
        open_dataset(f"nyu-normals:{tmp_path}", "train")[0]
    scipy.io.savemat(tmp_path / "nyu_geonet" / "f1.mat",
                     {"img": np.zeros((H, W, 3)), "depth": np.ones((H, W)), "norm": np.full((H, W, 3), 128.0)})
    with pytest.raises(DatasetFormatError, match=r"f1\.mat: 100% of the normals are not unit vectors"):
        open_dataset(f"nyu-normals:{tmp_path}", "train")[0]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    # probe3d's gzip pickle is refused, never unpickled, with the command that converts it once.
    (tmp_path / "nyuv2" / "all_normals.npy").unlink()
    with gzip.open(tmp_path / "nyuv2" / "all_normals.pklz", "wb") as f:
        pickle.dump({"all_normals": Evil()}, f)
    with pytest.raises(DatasetFormatError, match=r"all_normals\.pklz: is a pickle.*never unpickles.*np\.save"):
        open_dataset(f"nyu-normals:{tmp_path}", "val")
    np.save(tmp_path / "nyuv2" / "all_normals.npy", np.array([{"x": 1}], dtype=object))
    with pytest.raises(DatasetFormatError, match=r"all_normals\.npy: not a plain numpy array"):
        open_dataset(f"nyu-normals:{tmp_path}", "val")
    np.save(tmp_path / "nyuv2" / "all_normals.npy", np.zeros((5, H, W, 3), np.float32))
    (tmp_path / "nyuv2" / "test_SN40.json").write_text(json.dumps([{"img": "0099_x"}]))
    with pytest.raises(DatasetFormatError, match=r"test_SN40\.json: frame numbers outside 1\.\.5"):
        open_dataset(f"nyu-normals:{tmp_path}", "val")


# ------------------------------------------------------------------ NAVI, release layout
def write_navi_scene(scene, focal: float, plane_normal, names=("000", "001")) -> None:
    """Depth of the plane n·p = -1 (OpenCV camera frame) seen through a pinhole camera, in millimetres."""
    (scene / "images").mkdir(parents=True)
    (scene / "depth").mkdir()
    h, w = 12, 16
    u, v = np.meshgrid(np.arange(w) + 0.5 - w / 2, np.arange(h) + 0.5 - h / 2)
    n = unit(plane_normal)
    z = -1.0 / (n[0] * u / focal + n[1] * v / focal + n[2])  # p = z·(u/f, v/f, 1) on the plane
    annotations = []
    for name in names:
        Image.new("RGB", (w, h), (90, 20, 200)).save(scene / "images" / f"{name}.jpg")
        Image.fromarray(np.round(z * 1000).astype(np.uint16)).save(scene / "depth" / f"{name}.png")
        annotations.append({"filename": f"{name}.jpg", "camera": {"focal_length": focal}, "image_size": [h, w]})
    (scene / "annotations.json").write_text(json.dumps(annotations))


def test_navi_release_layout_splits_and_normals_of_a_plane(tmp_path):
    tilt = (0.3, -0.2, -1.0)
    for obj in ("keywest_showpiece", "schleich_bald_eagle"):
        for scene in ("multiview_00_pixel4a", "multiview_01_canon", "wild_set"):
            write_navi_scene(tmp_path / obj / scene, 14.0, tilt)
    write_navi_scene(tmp_path / "no_wild_object" / "multiview_00_pixel4a", 14.0, tilt)  # skipped, as probe3d
    train, val = open_dataset(f"navi:{tmp_path}", "train"), open_dataset(f"navi:{tmp_path}", "val")
    assert train.keys == [f"{o}/multiview_00_pixel4a/images/{n}" for o in ("keywest_showpiece", "schleich_bald_eagle")
                          for n in ("000", "001")]
    assert all("/wild_set/" in k for k in val.keys) and len(val) == 4
    s = val[0]
    valid = (s.normals.abs().sum(0) > 0).numpy()
    assert valid.sum() == (12 - 2) * (16 - 2)  # all but the border
    expected = np.broadcast_to(unit(tilt), (12, 16, 3))
    assert max_angle_deg(s.normals, expected, valid) < 1.0  # depth quantised to millimetres
    assert s.normals[2, 5, 5] < 0  # faces the camera


def test_normals_from_depth_is_exact_on_a_fronto_parallel_plane_and_invalid_at_holes():
    depth = np.full((5, 6), 2.0)
    depth[2, 3] = 0
    n = normals_from_depth(depth, focal=5.0)
    assert np.all(n[2, 2:5] == 0) and np.all(n[0] == 0)
    np.testing.assert_allclose(n[1, 1], [0, 0, -1], atol=1e-6)
    assert math.isclose(float(np.linalg.norm(n[3, 2])), 1.0, rel_tol=1e-6)


def test_navi_errors_name_the_annotation_file(tmp_path):
    write_navi_scene(tmp_path / "obj" / "multiview_00_a", 14.0, (0, 0, -1))
    write_navi_scene(tmp_path / "obj" / "wild_set", 14.0, (0, 0, -1))
    Image.new("RGB", (16, 12)).save(tmp_path / "obj" / "wild_set" / "images" / "007.jpg")
    with pytest.raises(DatasetFormatError, match=r"wild_set/annotations\.json: no entry for 007\.jpg"):
        open_dataset(f"navi:{tmp_path}", "val")
    with pytest.raises(DatasetFormatError, match=r"no train images"):
        open_dataset(f"navi:{tmp_path}", "train")  # one multiview scene: ⌊0.9⌋ = 0 for training
