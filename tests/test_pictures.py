"""Pictures are drawn at the photo's aspect, name every colour they use, and say when the weights are random."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import tips
from tips.inference import pictures as pics
from tips.inference.pca import pca_picture
from tips.inference.predict import PredictOptions, write_predictions

PHOTOS = [(300, 451), (400, 600), (48, 96), (3000, 2000), (64, 64)]


def _red_pixels(picture: Image.Image) -> int:
    return int((np.asarray(picture.convert("RGB")) == pics.RANDOM_MARK_COLOUR).all(-1).sum())


def _panel_aspect_ok(panel_hw: tuple[int, int], photo_hw: tuple[int, int]) -> bool:
    (H, W), (h, w) = panel_hw, photo_hw
    return abs(W * h / w - H) <= 1 and abs(H * w / h - W) <= 1


@pytest.mark.parametrize("photo", PHOTOS)
def test_every_dense_picture_has_the_photos_aspect_and_a_capped_or_upscaled_side(photo):
    x = torch.rand(3, 56, 56)  # the model's square input, whatever the photo's shape
    H, W = pics.display_size(photo)
    assert _panel_aspect_ok((H, W), photo) and pics.DISPLAY_MIN <= max(H, W) <= pics.DISPLAY_MAX
    for picture in (pics.depth_picture(x, torch.rand(56, 56) * 5, photo),
                    pics.normals_picture(x, torch.nn.functional.normalize(torch.randn(3, 56, 56), dim=0), photo),
                    pics.segmentation_picture(x, torch.randint(0, 5, (56, 56)), [f"c{i}" for i in range(5)], photo)):
        assert picture.height == H and picture.width > 2 * W
        photo_panel = np.asarray(picture)[:, :W]
        assert (photo_panel[:, -1] != 255).any()  # the photo fills its panel to the last column


def test_segmentation_legend_names_every_colour_drawn_including_the_grey_of_the_other_classes():
    names = [f"class {i}" for i in range(12)]
    labels = torch.arange(12).repeat_interleave(10)[None].expand(40, -1)  # 12 classes present, legend has 8 rows
    black = torch.zeros(3, 40, 120)
    picture = np.asarray(pics.segmentation_picture(black, labels, names, photo_size=(40, 120)))
    H, W = pics.display_size((40, 120))
    overlay = picture[:H, W : 2 * W].reshape(-1, 3)
    rows, _ = pics.legend_entries(labels.numpy(), names, pics.palette(12), pics.LEGEND_ROWS)
    assert len(rows) == pics.LEGEND_ROWS and rows[-1][1] == pics.OTHER_COLOUR and "other" in rows[-1][0]
    legend_colours = {tuple(int(pics.OVERLAY_ALPHA * c) for c in colour) for _, colour, _ in rows}
    drawn = {tuple(int(v) for v in c) for c in np.unique(overlay, axis=0)}
    assert drawn <= legend_colours and len(drawn) == len(rows)
    legend_panel = picture[:, 2 * W :].reshape(-1, 3)
    for _, colour, _ in rows:  # each swatch is drawn in the legend
        assert (legend_panel == colour).all(-1).any()


def test_random_weights_mark_is_on_every_picture_made_with_random_weights_and_only_those():
    x, photo = torch.rand(3, 56, 56), (200, 300)
    for random in (False, True):
        for picture in (pics.depth_picture(x, torch.rand(56, 56) + 1, photo, random=random),
                        pics.normals_picture(x, torch.nn.functional.normalize(torch.randn(3, 56, 56), dim=0), photo,
                                             random=random),
                        pics.segmentation_picture(x, torch.randint(0, 3, (56, 56)), ["a", "b", "c"], photo,
                                                  random=random),
                        pics.open_vocab_picture(x, torch.randint(0, 3, (56, 56)), ["a", "b"], none_id=2,
                                                random=random)):
            assert (_red_pixels(picture) > picture.width * 10) is random


def test_depth_bar_uses_the_one_depth_map_near_at_the_top():
    bar = np.asarray(pics.depth_bar(400, 1.0, 5.0))
    strip = bar[:, 8:20].astype(int)
    ramp_rows = (strip == strip[:, :1]).all((1, 2)) & (strip[:, 0] != 255).any(-1)  # uniform across the ramp
    coloured = strip[ramp_rows, 0]
    assert (coloured[0] == pics.depth_colours(np.zeros(1))[0]).all()  # near end first
    assert (coloured[-1] == pics.depth_colours(np.ones(1))[0]).all()


def test_normals_key_colours_the_sphere_by_its_normal():
    key = pics.normals_key(64).astype(int)
    assert (key[0, 0] == 255).all()  # outside the sphere
    assert key[32, 32, 2] > 250  # centre faces the camera: z = 1
    assert key[32, 62, 0] > key[32, 1, 0] and key[1, 32, 1] > key[62, 32, 1]  # x grows right, y grows up


def test_pca_picture_keeps_each_photos_aspect():
    images = [torch.rand(3, 56, 56), torch.rand(3, 56, 56)]
    grids = [torch.randn(4, 4, 8), torch.randn(4, 4, 8)]
    sheet = pca_picture(images, grids, ["wide", "tall"], [(100, 300), (300, 100)], columns=1)
    wide_h, wide_w = pics.display_size((100, 300), 512, 256)
    tall_h, tall_w = pics.display_size((300, 100), 512, 256)
    assert sheet.width == 2 * max(wide_w, tall_w) + 8
    assert _panel_aspect_ok((wide_h, wide_w), (100, 300)) and _panel_aspect_ok((tall_h, tall_w), (300, 100))
    assert sheet.height >= wide_h + tall_h


def test_probe_picture_legends_list_grey_invalid_and_ignored_pixels_and_mark_random_towers(tmp_path):
    from tips_eval.probes.common import VisSample
    from tips_eval.report import INVALID_GREY, legend_items, save_picture

    rng = np.random.default_rng(0)
    depth = rng.uniform(1, 4, (32, 48)).astype(np.float32)
    depth[:4] = 0  # no ground truth
    vis = [VisSample("a", rng.integers(0, 255, (32, 48, 3), dtype=np.uint8), depth, depth + 0.1,
                     rng.normal(size=(4, 6, 8)).astype(np.float32))]
    assert ("no ground truth", INVALID_GREY) in legend_items("depth", vis)
    full = [VisSample("a", vis[0].image, np.full_like(depth, 2.0), depth, vis[0].features)]
    assert legend_items("depth", full) == []
    seg = rng.integers(0, 3, (32, 48)).astype(np.int64)
    seg[0] = 255
    seg_vis = [VisSample("a", vis[0].image, seg, np.clip(seg, 0, 2), vis[0].features)]
    labels = [label for label, _ in legend_items("segmentation", seg_vis, ["sky", "ground", "cube"])]
    assert labels[:3] == ["sky", "ground", "cube"] and "ignored" in labels[3]
    for random in (False, True):
        path = save_picture(vis, tmp_path / f"depth-{random}.png", "depth", random=random)
        assert (_red_pixels(Image.open(path)) > 200) is random


def test_predict_with_a_random_head_marks_its_pictures_and_keeps_the_photos_shape(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    Image.fromarray(rng.integers(0, 255, (60, 150, 3), dtype=np.uint8)).save(tmp_path / "in" / "wide.png")
    torch.manual_seed(0)
    model = tips.create_model("tiny").eval()
    write_predictions(tmp_path / "in", tmp_path / "out", model,
                      PredictOptions("depth", random_head=True, resolution=56, progress=False))
    picture = Image.open(tmp_path / "out" / "wide.png.depth.png")
    H, W = pics.display_size((60, 150))
    assert picture.height == H + pics.RANDOM_BANNER and _panel_aspect_ok((H, W), (60, 150))
    assert _red_pixels(picture) > picture.width * 10
