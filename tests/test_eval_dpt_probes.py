"""DPT probe heads on frozen cached features: the cache holds exactly what the head reads from the model, a depth
and a normals head train on the scenes probe split (test-sized, CPU), and the saved heads load back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tips
from tips_eval.cli import main
from tips_eval.datasets import open_dataset
from tips_eval.features import FeatureSpec, cached_features, checkpoint_identity, image_to_tensor, resolve_layers
from tips_eval.probes.config import load_probe_config
from tips_eval.probes.dense import cache_levels, make_dpt_head, train_dpt
from tips_eval.probes.depth import DepthObjective

RES = 56


@pytest.fixture(scope="module")
def small_scenes(tmp_path_factory):
    from tips_pipelines.scenes import main as scenes_main

    out = tmp_path_factory.mktemp("scenes")
    assert scenes_main(["--out", str(out), "--num-train", "8", "--num-val", "3", "--num-pretrain", "0",
                        "--resolution", str(RES), "--seed", "2", "--num-workers", "1"]) == 0
    return out / "probe"


@pytest.mark.parametrize("preset", ["tips", "probe3d"])
def test_cached_levels_equal_what_the_head_reads_from_the_model(small_scenes, tmp_path, preset):
    torch.manual_seed(0)
    model = tips.create_model("tiny").eval()
    cfg = load_probe_config(None, [], task="depth", **{"depth.head": "dpt", "dpt.preset": preset})
    assert cfg.features.layers == "dpt" and cfg.features.norm == (preset == "tips") and cfg.features.cls
    spec = FeatureSpec((RES, RES), resolve_layers("dpt", model.cfg.vision.depth), cfg.features.norm, True)
    ds = open_dataset(f"scenes:{small_scenes}", "val")
    cache = cached_features(model, checkpoint_identity(None, random_init="tiny"), ds, spec, tmp_path, progress=False)
    head = make_dpt_head("depth", model, cfg, spec, 16, min_depth=1.0, max_depth=30.0)
    x = image_to_tensor(ds[1].image, (RES, RES))[None]
    expected = head.features(model, x)  # the head's own reading of the tower (layers, final LN per preset)
    got = cache_levels(cache, np.array([1]), "cpu")
    for (c_exp, p_exp), (c_got, p_got) in zip(expected, got):
        torch.testing.assert_close(c_got, c_exp, atol=2e-2, rtol=2e-3)  # fp16 storage
        torch.testing.assert_close(p_got, p_exp, atol=2e-2, rtol=2e-3)


def test_dpt_depth_probe_lowers_its_training_loss_on_the_scenes_split(small_scenes, tmp_path):
    torch.manual_seed(0)
    model = tips.create_model("tiny").eval()
    cfg = load_probe_config(None, ["optim.iterations=15", "optim.warmup=2", "optim.lr=3e-3", "dpt.fusion=16",
                                   "depth.bins=32"], task="depth", progress=False, **{"depth.head": "dpt"})
    spec = FeatureSpec((RES, RES), resolve_layers("dpt", 4), True, True)
    train = open_dataset(f"scenes:{small_scenes}", "train")
    cache = cached_features(model, checkpoint_identity(None, random_init="tiny"), train, spec, tmp_path, progress=False)
    objective = DepthObjective(1.0, 30.0, 0.5, sig_warmup=0)
    rows = np.arange(len(cache))

    def loss(head, step=10**6):
        depth = cache.targets("depth", rows)
        with torch.no_grad():
            return float(objective(head(cache_levels(cache, rows, "cpu"), size=depth.shape[-2:]), depth, step))

    head = make_dpt_head("depth", model, cfg, spec, 32, min_depth=1.0, max_depth=30.0)
    before = loss(head)

    def step_loss(head, levels, idx, step):
        depth = cache.targets("depth", idx)
        return objective(head(levels, size=depth.shape[-2:]), depth, step)

    after = loss(train_dpt(head, cache, cfg, step_loss))
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("task, preset, extra", [
    ("depth", "tips", ["--mask", "objects"]),
    ("normals", "probe3d", ["--mask", "objects", "--loss", "uncertainty"]),
])
def test_cli_trains_a_dpt_probe_on_scenes_and_saves_a_head_that_loads_back(small_scenes, tmp_path, task, preset, extra):
    out = tmp_path / "out"
    assert main([task, "--random-init", "tiny", "--dataset", f"scenes:{small_scenes}", "--resolution", str(RES),
                 "--head", "dpt", "--dpt-preset", preset, "--iterations", "4", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--num-vis", "1", "dpt.fusion=16",
                 *extra]) == 0
    name = next(out.glob(f"{task}-scenes-fast-dpt-{preset}-random-tiny-*-s0.json")).stem  # *: identity tag
    result = json.loads((out / f"{name}.json").read_text())
    d = result["details"]
    assert d["head"] == "dpt" and d["dpt_preset"] == preset and d["dpt_layers"] == [0, 1, 2, 3]
    assert d["upsample_to_gt"] == ("bilinear" if preset == "tips" else "bicubic")
    assert result["features"]["norm"] == (preset == "tips") and result["metrics"]["objects"]["images"] == 3
    assert (out / f"{name}.png").is_file()
    torch.manual_seed(0)
    model = tips.create_model("tiny").eval()  # the same seeded random tower the CLI built
    head = tips.load_head(result["head_paths"]["head"], task=task)
    assert head.cfg.preset == preset and head.cfg.fusion_width == 16
    if task == "normals":
        assert head.cfg.out_channels == 4  # κ for the uncertainty-aware loss
    x = torch.rand(1, 3, RES, RES)
    y = head.predict(model, x)
    assert y.shape == (1, 1 if task == "depth" else 3, RES, RES)
    if preset == "tips":  # the official layout round-trips the weights (it stores no bin range: compare raw outputs)
        official = tips.load_head(result["head_paths"]["head_official"], task=task)
        with torch.no_grad():
            levels = head.features(model, x)
            torch.testing.assert_close(official.decode(levels), head.decode(levels), atol=1e-5, rtol=1e-5)
    else:
        assert "head_official" not in result["head_paths"]  # probe3d's decoder has no official layout
