"""Tiles without seams and features at pixel resolution: one tile covering the image is the untiled run, blended
tiles never jump by more than the overlap allows (hard tiles do), JBU is bilinear on a flat guide and follows an
edge of the guide, and --upsample jbu runs in tips-extract, tips-predict and a linear probe."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

import tips
from tips.cli.extract import main as extract_main
from tips.cli.predict import main as predict_main
from tips.formats.dpt import save_pretrained_head
from tips.inference.open_vocab import OpenVocabOptions, encode_classes, open_vocab_segment
from tips.inference.predict import predict_dense
from tips.inference.tiling import Tiling, axis_weights, blend, plan_tiles
from tips.inference.upsample import Upsampler, upsampler
from tips.models.dpt import build_head


@pytest.fixture(scope="module")
def model() -> tips.TIPS:
    torch.manual_seed(0)  # what --random-init tiny --seed 0 does
    return tips.create_model("tiny").eval()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two smooth colour photos of different sizes (not multiples of the patch)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"wide": (150, 230), "tall": (200, 120)}.items():
        base = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        Image.fromarray(base).resize((w, h), Image.BICUBIC).save(root / f"{name}.png")
    return root


# ------------------------------------------------------------------ the tile plan and its weights
@pytest.mark.parametrize("size,tile,overlap", [(23, 8, 0.25), (37, 8, 0.45), (9, 8, 0.25), (8, 8, 0.3), (50, 16, 0.0)])
def test_tile_weights_sum_to_one_along_every_axis(size, tile, overlap):
    plan = plan_tiles((size, size), Tiling(tile * 14, overlap), 14)
    total = torch.zeros(size * 8)
    for i, start in enumerate(plan.rows):
        total[start * 8:(start + plan.tile[0]) * 8] += axis_weights(plan.rows, plan.tile[0], plan.ramp, 8, i)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    assert plan.rows[0] == 0 and plan.rows[-1] + plan.tile[0] == size


def _stub_run(plan, scale: int, values: dict):
    """A stub predictor: a different constant per tile (drawn once per tile start)."""
    rng = np.random.default_rng(1)

    def run(boxes):
        th, tw = plan.tile
        outs = []
        for box in boxes:
            values.setdefault(box, float(rng.uniform(0, 1)))
            outs.append(torch.full((1, th * scale, tw * scale), values[box]))
        return torch.stack(outs)

    return run


class _StubHead(torch.nn.Module):
    """Stands in for a DenseHead in :func:`predict_dense`: each tile's output is a constant read from its pixels."""

    cfg = type("cfg", (), {"preset": "tips"})()

    def features(self, model, crops):
        return crops

    def decode(self, crops):  # (n, 3, th·p, tw·p) → (n, 1, th·8, tw·8), constant per tile
        n, _, H, W = crops.shape
        return crops[:, :1, :1, :1].expand(n, 1, H // 14 * 8, W // 14 * 8)

    def task_map(self, raw):
        return raw

    def finish(self, x):
        return x


def _max_jump(x: torch.Tensor) -> float:
    return max(float((x[..., 1:, :] - x[..., :-1, :]).abs().max()), float((x[..., 1:] - x[..., :-1]).abs().max()))


def test_blended_tiles_of_a_stub_predictor_never_jump_more_than_the_overlap_allows_and_hard_tiles_do(model):
    torch.manual_seed(0)
    image = torch.rand(3, 30 * 14, 41 * 14)
    tile, overlap = 8 * 14, 0.25
    overlap_px = plan_tiles((30, 41), Tiling(tile, overlap), 14).ramp * 14
    blended = predict_dense(model, _StubHead(), image, Tiling(tile, overlap))
    hard = predict_dense(model, _StubHead(), image, Tiling(tile, 0.0))
    for out in (blended, hard):
        assert out.shape == (1, 30 * 14, 41 * 14)
    spread = float(blended.max() - blended.min())
    assert spread > 0.3  # the tiles really differ
    bound = 2 * spread / overlap_px
    assert _max_jump(blended) <= bound
    assert _max_jump(hard) > 2 * float(hard.max() - hard.min()) / overlap_px  # the same assertion fails


def test_blending_on_the_patch_grid_respects_the_same_bound():
    plan = plan_tiles((40, 40), Tiling(10 * 14, 0.4), 14)
    values: dict = {}
    out = blend(plan, _stub_run(plan, 1, values), 1)
    spread = max(values.values()) - min(values.values())
    assert _max_jump(out) <= 2 * spread / plan.ramp
    hard_plan = plan_tiles((40, 40), Tiling(10 * 14, 0.0), 14)
    hard = blend(hard_plan, _stub_run(hard_plan, 1, {}), 1)
    assert _max_jump(hard) > 2 * float(hard.max() - hard.min()) / plan.ramp


# ------------------------------------------------------------------ one tile = the whole image
@pytest.mark.parametrize("task", ["segmentation", "depth", "normals"])
def test_one_tile_covering_the_image_equals_whole_image_prediction(model, task):
    torch.manual_seed(2)
    head = build_head(task, model.width, 5 if task == "segmentation" else None, fusion=16).eval()
    image = torch.rand(3, 8 * 14, 11 * 14)
    whole = head.predict(model, image[None])[0]
    tiled = predict_dense(model, head, image, Tiling(11 * 14, 0.25))
    torch.testing.assert_close(tiled, whole, atol=1e-4, rtol=1e-4)  # the resize's float32 coordinates
    several = predict_dense(model, head, image, Tiling(6 * 14, 0.25))
    assert several.shape == whole.shape and not torch.allclose(several, whole, atol=1e-3)


def test_one_tile_in_tips_predict_writes_what_the_whole_image_run_writes(photos, tmp_path):
    torch.manual_seed(1)
    head = build_head("segmentation", 192, 7, fusion=16).eval()
    save_pretrained_head(head, tmp_path / "head")
    common = ["segmentation", str(photos), "--random-init", "tiny", "--head", str(tmp_path / "head"),
              "--resolution", "112", "--keep-aspect", "--no-progress", "--num-workers", "0"]
    assert predict_main([*common, "-o", str(tmp_path / "whole")]) == 0
    assert predict_main([*common, "-o", str(tmp_path / "tiled"), "--tile", "448", "--overlap", "0.3"]) == 0
    for name in ("wide", "tall"):
        a = load_file(str(tmp_path / "whole" / f"{name}.png.segmentation.safetensors"))
        b = load_file(str(tmp_path / "tiled" / f"{name}.png.segmentation.safetensors"))
        torch.testing.assert_close(b["logits"].float(), a["logits"].float(), atol=2e-3, rtol=2e-3)  # both float16
        # the tiled argmax is taken on the float16 logits it stores: near-ties may flip
        assert (a["argmax"] == b["argmax"]).float().mean() > 0.99


def test_one_tile_in_tips_extract_gives_the_whole_image_patch_tokens(photos, tmp_path):
    common = [str(photos), "--random-init", "tiny", "--patch-tokens", "--resolution", "224", "--no-progress",
              "--num-workers", "0"]
    assert extract_main([*common, "-o", str(tmp_path / "whole")]) == 0
    assert extract_main([*common, "-o", str(tmp_path / "tiled"), "--tile", "224", "--overlap", "0.25"]) == 0
    whole, tiled = (tips.load_features(tmp_path / n) for n in ("whole", "tiled"))
    assert whole.patch_tokens.shape == (2, 16, 16, 192)
    torch.testing.assert_close(tiled.patch_tokens, whole.patch_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiled.cls_alt, whole.cls_alt, atol=1e-5, rtol=1e-5)
    index = json.loads((tmp_path / "tiled" / "index.json").read_text())
    assert index["tile"] == "224" and index["overlap"] == "0.25"


def test_several_tiles_in_tips_extract_cover_the_grid_and_differ_from_one_pass(model):
    from tips.inference.extract import encode_tiled

    image = torch.rand(3, 16 * 14, 20 * 14)
    whole = encode_tiled(model, image, None)
    tiles = encode_tiled(model, image, Tiling(8 * 14, 0.25))
    assert tiles.patch_tokens.shape == whole.patch_tokens.shape == (16, 20, 192)
    assert not torch.allclose(tiles.patch_tokens, whole.patch_tokens, atol=1e-2)
    one = encode_tiled(model, image, Tiling(20 * 14, 0.25))
    torch.testing.assert_close(one.patch_tokens, whole.patch_tokens)


def test_one_tile_in_open_vocab_gives_the_whole_mode_scores():
    torch.manual_seed(0)
    m = tips.create_model("tiny", **{"vision.depth": 2, "text.depth": 1}).eval()
    text = encode_classes(m, ["sky", "road", "tree"])
    image = torch.rand(3, 130, 200)
    whole = open_vocab_segment(m, image, text, OpenVocabOptions(mode="whole"))
    tiled = open_vocab_segment(m, image, text, OpenVocabOptions(tile=14 * 15, overlap=0.25))
    torch.testing.assert_close(tiled.scores, whole.scores)
    assert torch.equal(tiled.labels, whole.labels) and tiled.settings["mode"] == "tiled"
    several = open_vocab_segment(m, image, text, OpenVocabOptions(tile=14 * 6, overlap=0.25))
    assert several.scores.shape == whole.scores.shape


# ------------------------------------------------------------------ the joint bilateral upsampler
@pytest.mark.parametrize("low,size", [((7, 9), (28, 36)), ((8, 8), (30, 41)), ((5, 6), (5, 6)), ((9, 12), (4, 5))])
def test_jbu_on_a_constant_guide_is_bilinear_upsampling(low, size):
    torch.manual_seed(0)
    features = torch.randn(2, 6, *low)
    guide = torch.full((2, 3, *size), 0.37)
    out = upsampler("jbu")(features, guide, size)
    ref = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
    assert (out - ref).abs().max() <= 1e-5


def test_jbu_puts_pixels_beside_a_step_edge_on_their_own_side_where_bilinear_does_not():
    H = W = 96
    h = w = 24
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    signed = (xx + 0.4 * yy - 57.3) / math.hypot(1, 0.4)  # distance to a slanted edge, in pixels
    right = signed > 0
    guide = torch.where(right, 0.75, 0.25)[None, None].expand(1, 3, H, W).contiguous()
    a, b = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0.0, 1.0, -0.5])
    truth = torch.where(right[None], b[:, None, None], a[:, None, None])  # (3, H, W)
    features = F.interpolate(truth[None], size=(h, w), mode="area")  # cells on the edge mix both sides
    far = signed.abs() > 1

    def correct_share(name: str) -> float:
        out = upsampler(name)(features, guide, (H, W))[0]
        nearest = (out - truth).norm(dim=0) < (out - torch.where(right[None], a[:, None, None],
                                                                  b[:, None, None])).norm(dim=0) / 4
        return float(nearest[far].float().mean())

    jbu, bilinear = correct_share("jbu"), correct_share("bilinear")
    assert jbu >= 0.95
    assert bilinear < jbu


def test_jbu_works_in_strips_and_refuses_a_missing_guide():
    torch.manual_seed(0)
    features, guide = torch.randn(1, 4, 10, 12), torch.rand(1, 3, 40, 48)
    up = Upsampler("jbu")
    whole = up(features, guide, (40, 48))
    strip = up.rows(features[:, :, 3:8], 3, 10, F.interpolate(guide, (10, 12), mode="bilinear", antialias=True),
                    guide[:, :, 16:28], (40, 48), 16, 28)
    torch.testing.assert_close(strip, whole[:, :, 16:28])
    with pytest.raises(ValueError, match="guide"):
        up(features, None, (40, 48))


# ------------------------------------------------------------------ --upsample jbu in the three tools
def test_upsample_jbu_in_tips_extract_stores_float16_tokens_at_four_times_the_grid(photos, tmp_path):
    assert extract_main([str(photos), "--random-init", "tiny", "--patch-tokens", "--resolution", "112",
                         "--upsample", "jbu", "-o", str(tmp_path / "o"), "--no-progress", "--num-workers", "0"]) == 0
    feats = tips.load_features(tmp_path / "o")
    assert feats.patch_tokens.shape == (2, 32, 32, 192)
    raw = load_file(str(tmp_path / "o" / "features-00000.safetensors"))
    assert raw["patch_tokens"].dtype == torch.float16 and raw["cls_alt"].dtype == torch.float32
    assert json.loads((tmp_path / "o" / "index.json").read_text())["upsample"] == "jbu"


def test_upsample_jbu_in_tips_predict_follows_the_image_not_the_bilinear_map(photos, tmp_path):
    torch.manual_seed(1)
    save_pretrained_head(build_head("depth", 192, fusion=16).eval(), tmp_path / "head")
    common = ["depth", str(photos), "--random-init", "tiny", "--head", str(tmp_path / "head"), "--resolution", "112",
              "--no-progress", "--num-workers", "0"]
    assert predict_main([*common, "-o", str(tmp_path / "bilinear")]) == 0
    assert predict_main([*common, "-o", str(tmp_path / "jbu"), "--upsample", "jbu"]) == 0
    a = np.asarray(Image.open(tmp_path / "bilinear" / "wide.png.depth16.png"), dtype=np.float64)
    b = np.asarray(Image.open(tmp_path / "jbu" / "wide.png.depth16.png"), dtype=np.float64)
    assert a.shape == b.shape == (112, 112) and np.abs(a - b).max() > 0
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9  # the same prediction, resized another way


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from tips_pipelines.scenes import main as scenes_main

    out = tmp_path_factory.mktemp("scenes")
    assert scenes_main(["--out", str(out), "--num-train", "8", "--num-val", "4", "--num-pretrain", "0",
                        "--resolution", "112", "--seed", "0", "--num-workers", "1"]) == 0
    return out / "probe"


@pytest.mark.parametrize("task,setting", [("segmentation", ["seg.upsample=4", "seg.upsampler=jbu"]),
                                          ("depth", ["depth.upsampler=jbu"])])
def test_upsample_jbu_in_a_linear_probe(scenes, tmp_path, task, setting):
    from tips_eval.cli import main as probe_main

    assert probe_main([task, "--random-init", "tiny", "--dataset", f"scenes:{scenes}", "--resolution", "112",
                       "--iterations", "5", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
                       "--no-progress", "--num-vis", "0", *setting]) == 0
    result = json.loads(next(tmp_path.glob(f"{task}-scenes-fast-*.json")).read_text())
    assert result["details"]["upsampler"] == "jbu" and result["details"]["upsample"] == 4


def test_a_tile_off_the_patch_grid_is_refused_naming_the_nearest(photos, tmp_path, capsys):
    code = predict_main(["depth", str(photos), "--random-init", "tiny", "--random-head", "--tile", "100",
                         "-o", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "--tile 100" in err and "98" in err


# ------------------------------------------------------------------ memory of a tiled prediction
ROOT = Path(__file__).resolve().parents[1]


def peak_rss(side: int, folder: Path) -> dict:
    """bench/tiled_memory.py in a fresh process: its peak RSS and output bytes for a SIDE² photo."""
    done = subprocess.run([sys.executable, "-m", "bench.tiled_memory", "--side", str(side), "--out", str(folder)],
                          capture_output=True, text=True, timeout=1800, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_of_a_tiled_prediction_grows_with_its_output_arrays_only(tmp_path):
    small, large = peak_rss(1024, tmp_path / "small"), peak_rss(2048, tmp_path / "large")
    assert large["predicted"] == [2044, 2044] and large["output_bytes"] > 3.9 * small["output_bytes"]
    grown = large["peak_rss_bytes"] - small["peak_rss_bytes"]
    assert grown <= 1.25 * (large["output_bytes"] - small["output_bytes"]), (small, large)
