"""Dataset readers on tiny copies written here in each official layout."""

import json

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from tips_eval.datasets import (
    IGNORE_INDEX,
    DatasetFormatError,
    VOC_CLASSES,
    open_dataset,
)


def save_rgb(path, h=6, w=8, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


# ------------------------------------------------------------------ ADE20K
def write_ade20k(root):
    base = root / "ADEChallengeData2016"
    for folder, names in (("training", ["ADE_train_00000001", "ADE_train_00000002"]), ("validation", ["ADE_val_00000001"])):
        for i, name in enumerate(names):
            save_rgb(base / "images" / folder / f"{name}.jpg", seed=i)
            label = np.zeros((6, 8), dtype=np.uint8)
            label[0, :3] = [1, 150, 0]
            label[1, 0] = 7
            (base / "annotations" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(label, "L").save(base / "annotations" / folder / f"{name}.png")
    return base


def test_ade20k_reduces_zero_label_to_150_classes_and_ignores_other(tmp_path):
    write_ade20k(tmp_path)
    train = open_dataset(f"ade20k:{tmp_path}", "train")  # the parent of ADEChallengeData2016 works too
    assert len(train) == 2 and train.info.num_classes == 150 and train.info.class_names[0] == "wall"
    s = train[0]
    assert s.seg.dtype == torch.int64 and s.seg.shape == (6, 8) and s.image.size == (8, 6)
    assert s.seg[0, :3].tolist() == [0, 149, IGNORE_INDEX]
    assert s.seg[1, 0] == 6 and s.seg[5, 5] == IGNORE_INDEX
    assert s.depth is None
    assert len(open_dataset(f"ade20k:{tmp_path}/ADEChallengeData2016", "val")) == 1


def test_ade20k_missing_annotation_or_bad_label_names_the_file(tmp_path):
    base = write_ade20k(tmp_path)
    (base / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    ds = open_dataset(f"ade20k:{base}", "train")
    with pytest.raises(DatasetFormatError, match="ADE_train_00000002.png"):
        ds[1]
    Image.fromarray(np.full((6, 8), 151, np.uint8)).save(base / "annotations" / "training" / "ADE_train_00000001.png")
    with pytest.raises(DatasetFormatError, match="1..150"):
        ds[0]
    with pytest.raises(DatasetFormatError, match="images/validation"):
        open_dataset(f"ade20k:{tmp_path / 'nowhere'}", "val")


# ------------------------------------------------------------------ VOC
def write_voc(root):
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n2007_000039\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    for i, key in enumerate(["2007_000032", "2007_000039", "2007_000033"]):
        save_rgb(voc / "JPEGImages" / f"{key}.jpg", seed=i)
        label = np.zeros((6, 8), dtype=np.uint8)
        label[2:4, 2:5] = 15  # person
        label[1, :] = 255  # void border
        im = Image.fromarray(label, "P")
        im.putpalette([v for c in range(256) for v in (c, 255 - c, (c * 7) % 256)])
        im.save(voc / "SegmentationClass" / f"{key}.png")
    return voc


def test_voc_reads_palette_indices_as_21_classes_with_void_ignored(tmp_path):
    write_voc(tmp_path)
    train = open_dataset(f"voc:{tmp_path}", "train")
    assert train.keys == ["2007_000032", "2007_000039"]
    assert train.info.class_names == list(VOC_CLASSES) and train.info.object_classes == list(range(1, 21))
    s = train[1]
    assert s.seg[2, 2] == 15 and s.seg[0, 0] == 0 and s.seg[1, 3] == IGNORE_INDEX
    assert open_dataset(f"voc:{tmp_path}/VOCdevkit/VOC2012", "val")[0].seg.shape == (6, 8)


def test_voc_rgb_label_png_is_rejected_with_its_path(tmp_path):
    voc = write_voc(tmp_path)
    Image.new("RGB", (8, 6)).save(voc / "SegmentationClass" / "2007_000033.png")
    with pytest.raises(DatasetFormatError, match=r"2007_000033.png.*mode 'RGB'"):
        open_dataset(f"voc:{voc}", "val")[0]
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DatasetFormatError, match="val.txt"):
        open_dataset(f"voc:{voc}", "val")


# ------------------------------------------------------------------ NYUv2
def write_nyu_mat(root, n=5, h=6, w=8):
    """MATLAB v7.3 layout: images (N, 3, W, H), depths (N, W, H) — the transposes of (H, W)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    depths = rng.uniform(0.5, 9.5, (n, h, w)).astype(np.float32)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = images.transpose(0, 3, 2, 1)
        f["depths"] = depths.transpose(0, 2, 1)
    return images, depths


def test_nyu_labeled_mat_is_transposed_back_and_split_by_the_official_1_based_indices(tmp_path):
    images, depths = write_nyu_mat(tmp_path)
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [3], [4]]), "testNdxs": np.array([[2], [5]])})
    train, val = open_dataset(f"nyu:{tmp_path}", "train"), open_dataset(f"nyu:{tmp_path}", "val")
    assert len(train) == 3 and len(val) == 2 and val.keys == ["nyu-0002", "nyu-0005"]
    s = val[1]
    assert s.image.size == (8, 6)
    np.testing.assert_array_equal(np.asarray(s.image), images[4])
    np.testing.assert_allclose(s.depth.numpy(), depths[4])
    assert s.seg is None and val.info.eigen_crop and val.info.depth_max == 10.0
    assert "splits.mat" in val.info.source


def test_nyu_split_from_json_and_missing_split_file_is_named(tmp_path):
    write_nyu_mat(tmp_path)
    with pytest.raises(DatasetFormatError, match="splits.mat"):
        open_dataset(f"nyu:{tmp_path}/nyu_depth_v2_labeled.mat", "train")
    split = tmp_path / "my_split.json"
    split.write_text(json.dumps({"train": [1, 2], "test": [3]}))
    assert len(open_dataset(f"nyu:{tmp_path}?splits={split}", "train")) == 2
    split.write_text(json.dumps({"train": [1, 99], "test": [3]}))
    with pytest.raises(DatasetFormatError, match="indices outside"):
        open_dataset(f"nyu:{tmp_path}?splits={split}", "train")


def test_nyu_raw_frames_from_bts_list_with_millimetre_depth(tmp_path):
    for split, scene in (("train", "kitchen_0028a"), ("test", "bathroom")):
        folder = tmp_path / ("sync" if split == "train" else "test") / scene
        folder.mkdir(parents=True)
        save_rgb(folder / "rgb_00045.jpg")
        Image.fromarray(np.full((6, 8), 2500, np.uint16)).save(folder / "sync_depth_00045.png")
        rel = folder.relative_to(tmp_path)
        (tmp_path / f"nyu_{split}.txt").write_text(f"/{rel}/rgb_00045.jpg /{rel}/sync_depth_00045.png 518.8579\n")
    train = open_dataset(f"nyu-raw:{tmp_path}", "train")
    assert len(train) == 1 and float(train[0].depth[0, 0]) == pytest.approx(2.5)
    assert "nyu_train.txt" in train.info.source


# ------------------------------------------------------------------ plain folder and scenes
def write_folder(root, with_seg=True):
    classes = {"classes": [{"id": 0, "name": "bg", "is_object": False}, {"id": 1, "name": "thing", "is_object": True}],
               "depth_min": 0.5, "depth_max": 20.0, "depth_scale": 0.001, "ignore_index": 255}
    (root / "train").mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps(classes))
    save_rgb(root / "train" / "a.png")
    seg = np.array([[0, 1, 255, 0]] * 2, np.uint8).repeat(3, 0).repeat(2, 1)  # (6, 8)
    Image.fromarray(seg).save(root / "train" / "a.seg.png")
    Image.fromarray(np.full((6, 8), 1234, np.uint16)).save(root / "train" / "a.depth.png")
    return classes


def test_folder_format_reads_image_seg_and_metric_depth(tmp_path):
    write_folder(tmp_path)
    ds = open_dataset(f"folder:{tmp_path}", "train")
    s = ds[0]
    assert ds.keys == ["a"] and ds.info.class_names == ["bg", "thing"] and ds.info.object_classes == [1]
    assert s.depth.dtype == torch.float32 and float(s.depth[0, 0]) == pytest.approx(1.234)
    assert set(s.seg.unique().tolist()) <= {0, 1, 255}
    assert ds.info.depth_min == 0.5 and ds.info.has_seg and ds.info.has_depth


def test_folder_errors_name_the_file_and_what_was_expected(tmp_path):
    write_folder(tmp_path)
    Image.fromarray(np.full((6, 8), 7, np.uint8)).save(tmp_path / "train" / "a.seg.png")
    with pytest.raises(DatasetFormatError, match=r"a.seg.png.*class id 7"):
        open_dataset(f"folder:{tmp_path}", "train")[0]
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "train" / "a.seg.png")
    with pytest.raises(DatasetFormatError, match="expected the image's"):
        open_dataset(f"folder:{tmp_path}", "train")[0]
    (tmp_path / "classes.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="classes.json.*not valid JSON"):
        open_dataset(f"folder:{tmp_path}", "train")
    with pytest.raises(DatasetFormatError, match="val"):
        open_dataset(f"folder:{tmp_path}", "val")
    with pytest.raises(ValueError, match="KIND:/path"):
        open_dataset(f"coco:{tmp_path}", "train")


def test_scenes_probe_split_written_by_tips_scenes(tmp_path):
    from tips_pipelines.scenes import main as scenes_main

    assert scenes_main(["--out", str(tmp_path), "--num-train", "2", "--num-val", "1", "--num-pretrain", "0",
                        "--resolution", "32", "--seed", "0", "--num-workers", "1"]) == 0
    for spec in (f"scenes:{tmp_path}", f"scenes:{tmp_path}/probe"):
        ds = open_dataset(spec, "train")
        assert ds.info.name == "scenes" and len(ds) == 2
    s = ds[0]
    assert s.image.size == (32, 32) and s.seg.shape == (32, 32) and s.depth.shape == (32, 32)
    assert ds.info.class_names[:2] == ["sky", "ground"] and ds.info.object_classes == [2, 3, 4, 5]
    assert ds.info.depth_min == 1.0 and ds.info.depth_max == 30.0
    valid = s.depth[s.depth > 0]
    assert valid.min() >= 1.0 and valid.max() <= 30.0
    assert bool((s.depth[s.seg == 0] == 0).all())  # sky has no depth
