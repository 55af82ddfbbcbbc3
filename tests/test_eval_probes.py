"""Probes learn what is linearly predictable; the feature cache is keyed and reused; tips-probe end to end."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tips.io.recipes import RECIPES
import tips
from tips_eval.cli import main
from tips_eval.datasets import DatasetInfo, open_dataset
from tips_eval.features import FeatureCache, FeatureSpec, cache_key, cached_features, checkpoint_identity, resolve_layers
from tips_eval.probes import depth as depth_probe
from tips_eval.probes import segmentation as seg_probe
from tips_eval.probes.common import upsample_bilinear
from tips_eval.probes.config import load_probe_config, preset
from tips_eval.report import markdown

P = 8  # pixels per patch of the synthetic data
CONFIGS = RECIPES / "probe"


class ArrayDataset:
    """Just enough of a DenseDataset for the evaluators: targets at full resolution, grey images."""

    def __init__(self, seg=None, depth=None, num_classes=0, depth_range=(1.0, 10.0)):
        self.seg, self.depth = seg, depth
        n = len(seg if seg is not None else depth)
        self.keys = [f"k{i}" for i in range(n)]
        self.info = DatasetInfo("synthetic", "/", "val", [f"c{i}" for i in range(num_classes)], [True] * num_classes,
                                *depth_range, seg is not None, depth is not None)

    def load_seg(self, i):
        return torch.from_numpy(self.seg[i]).long()

    def load_depth(self, i):
        return torch.from_numpy(self.depth[i]).float()

    def load_image(self, i):
        return Image.new("RGB", self.seg[i].shape[::-1] if self.seg is not None else self.depth[i].shape[::-1])


def write_cache(path, patch, seg=None, depth=None):
    path.mkdir(parents=True)
    np.save(path / "patch.npy", patch.astype(np.float16))
    for name, arr in (("seg", seg), ("depth", depth)):
        if arr is not None:
            np.save(path / f"{name}.npy", arr)
    (path / "meta.json").write_text(json.dumps({"keys": [f"k{i}" for i in range(len(patch))]}))
    return FeatureCache(path)


def fast_cfg(task, *overrides):
    return load_probe_config(None, list(overrides), task=task, progress=False, num_vis=1)


def test_fast_segmentation_probe_reaches_high_miou_when_classes_are_linear_in_the_features(tmp_path):
    rng = np.random.default_rng(0)
    patch = rng.normal(size=(24, 4, 4, 8)).astype(np.float32)
    # Labels from the bilinearly upsampled features, as the probe's logits are upsampled: exactly linear.
    pixels = upsample_bilinear(torch.from_numpy(patch).permute(0, 3, 1, 2), (4 * P, 4 * P), channels_last=True)
    seg = (pixels.numpy() @ rng.normal(size=(8, 3))).argmax(-1).astype(np.uint8)  # (N, 32, 32)
    train = write_cache(tmp_path / "train", patch[:16], seg=seg[:16])
    val = write_cache(tmp_path / "val", patch[16:], seg=seg[16:])
    cfg = fast_cfg("segmentation", "optim.iterations=300", "optim.lr=1e-2")
    head = seg_probe.train_fast(train, 3, cfg, torch.device("cpu"))
    metrics, vis = seg_probe.evaluate_fast(head, val, ArrayDataset(seg=seg[16:], num_classes=3), [1, 2], num_vis=1)
    assert metrics["miou"] > 0.85 and metrics["pixel_accuracy"] > 0.9, metrics
    assert "miou_subset" in metrics and len(vis) == 1 and vis[0].pred.shape == (32, 32)


def test_fast_depth_probe_learns_a_depth_that_the_features_encode_linearly(tmp_path):
    rng = np.random.default_rng(0)
    n, h = 24, 4
    rows = (np.arange(h * P) + 0.5) / (h * P)
    depth = np.stack([np.tile((a + b * rows)[:, None], (1, h * P)) for a, b in rng.uniform([2, 1], [4, 5], (n, 2))])
    centre = depth[:, P // 2:: P, P // 2:: P]  # (N, 4, 4) depth at the patch centres
    mu = np.linspace(1, 10, 12)
    patch = np.exp(-((centre[..., None] - mu) ** 2) / 0.8)  # RBF code of the depth: (N, 4, 4, 12)
    train = write_cache(tmp_path / "train", patch[:16], depth=depth[:16].astype(np.float32))
    val = write_cache(tmp_path / "val", patch[16:], depth=depth[16:].astype(np.float32))
    cfg = fast_cfg("depth", "optim.iterations=300", "optim.lr=3e-2", "depth.bins=64", "optim.batch_size=8")
    head = depth_probe.train_fast(train, cfg, 1.0, 10.0, torch.device("cpu"))
    gt = ArrayDataset(depth=depth[16:].astype(np.float32))
    metrics, _ = depth_probe.evaluate_fast(head, val, None, gt, cfg, 1.0, 10.0)
    constant = np.sqrt(((depth[16:] - depth[:16].mean()) ** 2).mean(axis=(1, 2))).mean()
    assert metrics["all"]["rmse"] < 0.25 * constant and metrics["all"]["d1"] > 0.95


def test_depth_head_outputs_an_expectation_over_bins_inside_the_range():
    head = depth_probe.LinearDepthHead(5, depth_probe.bin_centers(16, 2.0, 8.0, "log"))
    out = head(torch.randn(3, 5, 2, 3) * 100)
    assert out.shape == (3, 1, 8, 12) and out.min() >= 2.0 and out.max() <= 8.0


def test_presets_follow_dinov2_and_overrides_win():
    assert preset("depth", "fast", "lin4")["features"] == {"layers": "quarters", "norm": False, "cls": True}
    seg = load_probe_config(None, ["optim.lr=0.5"], task="segmentation", protocol="dinov2")
    assert (seg.optim.iterations, seg.optim.batch_size, seg.optim.warmup, seg.optim.schedule) == (40000, 16, 1500, "poly")
    assert seg.augment.crop == [512, 512] and seg.augment.stride == 341 and seg.optim.lr == 0.5
    assert seg.features.norm and not seg.features.cls
    with pytest.raises(Exception, match="no_such_key"):
        load_probe_config(None, ["optim.no_such_key=1"])


def test_resolve_layers_matches_dinov2_block_indices():
    assert resolve_layers("last", 12) == (11,)
    assert resolve_layers("quarters", 12) == (2, 5, 8, 11) and resolve_layers("quarters", 24) == (5, 11, 17, 23)
    assert resolve_layers("last4", 12) == (8, 9, 10, 11) and resolve_layers("1,3", 4) == (1, 3)
    with pytest.raises(ValueError):
        resolve_layers("12", 12)


# ------------------------------------------------------------------ end to end on a tiny scenes split
@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from tips_pipelines.scenes import main as scenes_main

    out = tmp_path_factory.mktemp("scenes")
    assert scenes_main(["--out", str(out), "--num-train", "16", "--num-val", "8", "--num-pretrain", "0",
                        "--resolution", "112", "--seed", "0", "--num-workers", "1"]) == 0
    return out / "probe"


def test_feature_cache_matches_the_model_and_is_reused_and_keyed_by_settings(scenes, tmp_path):
    torch.manual_seed(0)
    model = tips.create_model("tiny").eval()
    ds = open_dataset(f"scenes:{scenes}", "val")
    ident = checkpoint_identity(None, random_init="tiny", seed=0)
    spec = FeatureSpec((112, 112), (3,), norm=True, cls=False)
    cache = cached_features(model, ident, ds, spec, tmp_path, batch_size=4, progress=False)
    assert cache.patch.shape == (8, 8, 8, 192) and cache.seg.shape == (8, 112, 112) and cache.depth.dtype == np.float32
    meta = json.loads((cache.path / "meta.json").read_text())
    assert meta["features"]["layers"] == [3] and meta["checkpoint"]["kind"] == "random-init"
    with torch.no_grad():
        x = torch.from_numpy(np.array(ds.load_image(0))).permute(2, 0, 1)[None].float() / 255
        ref = model.encode_image(x).patch_tokens[0].numpy()
    np.testing.assert_allclose(np.asarray(cache.patch[0], np.float32), ref, atol=2e-2, rtol=1e-2)
    again = cached_features(model, ident, ds, spec, tmp_path, progress=False)
    assert again.path == cache.path and len(list(tmp_path.iterdir())) == 1
    other = FeatureSpec((112, 112), (3,), norm=False, cls=True)
    assert cache_key(ident, ds, other)[0] != cache.path.name
    assert cache_key(checkpoint_identity(None, random_init="tiny", seed=1), ds, spec)[0] != cache.path.name


def run_cli(*args):
    assert main(list(args)) == 0


def test_cli_segmentation_on_scenes_writes_json_markdown_and_picture(scenes, tmp_path, capsys):
    run_cli("segmentation", "--random-init", "tiny", "--dataset", f"scenes:{scenes}", "--resolution", "112",
            "--iterations", "20", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
            "--object-classes", "--no-progress", "--num-vis", "2")
    name = next((tmp_path / "out").glob("segmentation-scenes-fast-random-tiny-*-s0.json")).stem  # *: identity tag
    result = json.loads((tmp_path / "out" / f"{name}.json").read_text())
    assert result["protocol"] == "fast" and result["features"]["resolution"] == [112, 112]
    assert result["details"]["subset_classes"] == ["sphere", "cube", "cylinder", "cone"]
    assert 0 <= result["metrics"]["miou"] <= 1 and "miou_subset" in result["metrics"]
    assert result["config"]["optim"]["iterations"] == 20 and result["dataset"]["num_train"] == 16
    assert (tmp_path / "out" / f"{name}.md").read_text().startswith("### segmentation probe")
    assert (tmp_path / "out" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert result["paths"]["picture"] == str(tmp_path / "out" / f"{name}.png")
    assert "| sphere |" in capsys.readouterr().out
    [line] = (tmp_path / "out" / "results.jsonl").read_text().splitlines()  # the run, for tips-probe compare
    logged = json.loads(line)
    assert logged["model"]["label"] == "random-tiny" and logged["model"]["id"] in name  # the tag of the file name
    assert logged["metrics"]["miou"] == result["metrics"]["miou"] and logged["file"].endswith(f"{name}.json")


def test_cli_depth_from_a_save_pretrained_folder_with_object_mask_log_bins_and_flip_tta(scenes, tmp_path):
    torch.manual_seed(1)
    tips.save(tips.create_model("tiny"), tmp_path / "ckpt")
    run_cli("depth", "--model", str(tmp_path / "ckpt"), "--dataset", f"scenes:{scenes}", "--resolution", "112",
            "--head", "lin4", "--spacing", "log", "--mask", "objects", "--flip-tta", "--iterations", "10",
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--no-progress", "depth.bins=32")
    name = next((tmp_path / "out").glob("depth-scenes-fast-ckpt-*-s0.json")).stem  # *: identity tag
    result = json.loads((tmp_path / "out" / f"{name}.json").read_text())
    assert result["checkpoint"]["kind"] == "folder" and result["features"]["layers"] == [0, 1, 2, 3]
    assert not result["features"]["norm"] and result["features"]["cls"]
    assert result["details"]["spacing"] == "log" and result["details"]["bins"] == 32 and result["details"]["flip_tta"]
    assert result["metrics"]["all"]["images"] == 8 and result["metrics"]["objects"]["rmse"] > 0
    assert (tmp_path / "out" / f"{name}.png").is_file()
    assert len(list((tmp_path / "cache").iterdir())) == 3  # train, val, flipped val
    objects = result["metrics"]["objects"]
    row = next(r for r in (tmp_path / "out" / f"{name}.md").read_text().splitlines()
               if r.startswith("| objects |"))
    assert f"| {objects['rmse_aligned']:.4f} | {objects['bias']:.4f} | 8 |" in row
    del objects["bias"]  # a result written before the bias column: the report still renders, with a dash
    assert "| – | 8 |" in markdown(result)


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_dinov2_protocol_runs_on_augmented_crops_with_tiny_iteration_counts(scenes, tmp_path, task):
    run_cli(task, "--random-init", "tiny", "--dataset", f"scenes:{scenes}", "--protocol", "dinov2",
            "--iterations", "2", "--out", str(tmp_path), "--no-progress", "--num-vis", "1", "optim.batch_size=2",
            "optim.warmup=1", "augment.crop=[56,70]", "augment.stride=37", "augment.test_short_side=84")
    result = json.loads(next(tmp_path.glob(f"{task}-scenes-dinov2-random-tiny-*-s0.json")).read_text())
    assert result["protocol"] == "dinov2" and result["details"]["crop"] == [56, 70]
    assert result["config"]["optim"]["iterations"] == 2 and not list(tmp_path.glob("*/patch.npy"))


def test_cli_forwards_global_tasks_to_their_modules(monkeypatch):
    seen = {}
    fake = types.ModuleType("tips_eval.knn")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "tips_eval.knn", fake)
    assert main(["knn", "--k", "20", "--model", "x"]) == 0
    assert seen["argv"] == ["--k", "20", "--model", "x"]
    with pytest.raises(SystemExit) as exit_:  # no subcommand: a one-line usage error
        main([])
    assert exit_.value.code == 2


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_probe_config_loads(path):
    cfg = load_probe_config(path)
    assert cfg.task in ("segmentation", "depth", "normals") and cfg.protocol in ("fast", "dinov2")


def test_python_api_runs_a_probe_and_keys_the_cache_by_the_weights(scenes, tmp_path):
    from tips_eval.probes import run_probe

    torch.manual_seed(0)
    model = tips.create_model("tiny")
    cfg = load_probe_config(None, ["optim.iterations=5"], task="segmentation", progress=False,
                            **{"features.resolution": 112})
    result = run_probe(model, f"scenes:{scenes}", cfg, out_dir=None, cache_dir=tmp_path)
    assert result["checkpoint"]["kind"] == "weights" and "paths" not in result
    assert result["markdown"].startswith("### segmentation probe")
    run_probe(model, f"scenes:{scenes}", cfg, out_dir=None, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # train and val, extracted once
