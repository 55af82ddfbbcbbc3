"""Surface normals: hand-computed angular losses and metrics, a linear probe that learns normals its features
encode, and ``tips-probe normals`` end to end on the scenes probe split."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tips_eval.cli import main
from tips_eval.datasets import DatasetInfo
from tips_eval.features import FeatureCache
from tips_eval.probes import normals as normals_probe
from tips_eval.probes.common import upsample_bilinear
from tips_eval.probes.config import load_probe_config, preset
from tips_eval.probes.losses import AngularLoss, UncertaintyAngularLoss
from tips_eval.probes.metrics import NormalMetrics, image_normal_metrics

from test_eval_probes import scenes  # noqa: F401  (the module-scoped tiny scenes split)


def vec(*columns) -> torch.Tensor:
    """Pixels given as 3-vectors → (1, 3, 1, N)."""
    return torch.tensor(columns, dtype=torch.float32).T[None, :, None, :]


def test_angular_loss_is_the_mean_clamped_angle_over_valid_pixels():
    pred = vec((1, 0, 0), (2, 0, 0), (0, 0, 5))  # 90°, 0° (clamped), excluded
    target = vec((0, 1, 0), (1, 0, 0), (1, 0, 0))
    valid = torch.tensor([[[True, True, False]]])
    expected = (math.pi / 2 + math.acos(1 - 1e-4)) / 2
    assert AngularLoss()(pred, target, valid).item() == pytest.approx(expected, rel=1e-5)
    assert AngularLoss()(pred, target, torch.zeros_like(valid)).item() == 0.0


def test_uncertainty_loss_matches_the_angular_vmf_nll_by_hand():
    pred = torch.cat([vec((1, 0, 0), (0, 1, 1)), torch.tensor([0.0, 2.0]).view(1, 1, 1, 2)], dim=1)  # κ raw z
    target = vec((0, 1, 0), (0, 1, 1))
    valid = torch.ones(1, 1, 2, dtype=torch.bool)

    def nll(z: float, theta: float) -> float:
        kappa = (z if z > 0 else math.exp(z) - 1) + 1.01  # ELU + 1.01
        return math.log(1 + math.exp(-kappa * math.pi)) - math.log(1 + kappa**2) + kappa * theta

    expected = (nll(0.0, math.pi / 2) + nll(2.0, math.acos(1 - 1e-4))) / 2
    assert UncertaintyAngularLoss()(pred, target, valid).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="4 channels"):
        UncertaintyAngularLoss()(pred[:, :3], target, valid)


def rotated(angles_deg) -> tuple[torch.Tensor, torch.Tensor]:
    """gt = +z everywhere; pred tilted from +z by the given angles (one pixel each): (3, 1, N) each."""
    a = torch.deg2rad(torch.tensor(angles_deg, dtype=torch.float64))
    pred = torch.stack([torch.sin(a), torch.zeros_like(a), torch.cos(a)])[:, None] * 3.0  # any length
    return pred.float(), torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 1, len(angles_deg)).clone()


def test_normal_metrics_per_image_by_hand_and_invalid_pixels_left_out():
    pred, gt = rotated([0, 10, 20, 40, 90])
    gt[:, 0, 4] = 0  # invalid ground truth
    m = image_normal_metrics(pred, gt)
    assert m["mean"] == pytest.approx(17.5, abs=1e-3) and m["median"] == pytest.approx(15.0, abs=1e-3)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 100 + 400 + 1600) / 4), abs=1e-3)
    assert (m["pct_11.25"], m["pct_22.5"], m["pct_30"]) == (50.0, 75.0, 75.0)
    valid = torch.tensor([[True, True, False, False, True]])
    assert image_normal_metrics(pred, gt, valid)["mean"] == pytest.approx(5.0, abs=1e-3)
    assert image_normal_metrics(pred, torch.zeros_like(gt)) is None


def test_normal_metrics_average_images_not_pixels():
    acc = NormalMetrics()
    acc.update(*rotated([10]))
    acc.update(*rotated([20, 20, 20]))
    acc.update(*rotated([5])[:1], torch.zeros(3, 1, 1))
    out = acc.compute()
    assert out["mean"] == pytest.approx(15.0, abs=1e-3)  # pixel mean would be 17.5
    assert out["images"] == 2 and out["images_without_valid_pixels"] == 1


def test_normals_preset_and_protocol():
    assert preset("normals", "fast", "lin4")["features"] == {"layers": "quarters", "norm": False, "cls": True}
    cfg = load_probe_config(None, [], task="normals", **{"normals.loss": "uncertainty"})
    assert normals_probe.out_channels(cfg) == 4 and cfg.normals.head == "lin1"
    with pytest.raises(ValueError, match="protocol=fast"):
        load_probe_config(None, [], task="normals", protocol="dinov2")


class NormalsArrays:
    def __init__(self, normals: np.ndarray) -> None:
        self.normals = normals
        self.keys = [f"k{i}" for i in range(len(normals))]
        self.info = DatasetInfo("synthetic", "/", "val", has_normals=True)

    def load_normals(self, i):
        return torch.from_numpy(self.normals[i])

    def load_image(self, i):
        from PIL import Image

        return Image.new("RGB", self.normals[i].shape[:0:-1])


@pytest.mark.parametrize("loss", ["angular", "uncertainty"])
def test_linear_normals_probe_learns_normals_its_features_encode(tmp_path, loss):
    rng = np.random.default_rng(0)
    n, h = 24, 4
    patch = rng.normal(size=(n, h, h, 8)).astype(np.float32)
    # Normals from the bilinearly upsampled features, as the head's output is resized: exactly linear, then normalised.
    pixels = upsample_bilinear(torch.from_numpy(patch).permute(0, 3, 1, 2), (16, 16), channels_last=True).numpy()
    full = pixels @ rng.normal(size=(8, 3))
    full = (full / np.linalg.norm(full, axis=-1, keepdims=True)).astype(np.float32)  # (N, 16, 16, 3)
    full[:, 0, 0] = 0  # an invalid pixel
    caches = []
    for name, rows in (("train", slice(0, 16)), ("val", slice(16, n))):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "patch.npy", patch[rows].astype(np.float16))
        np.save(tmp_path / name / "normals.npy", full[rows].astype(np.float16))
        (tmp_path / name / "meta.json").write_text(json.dumps({"keys": [f"k{i}" for i in range(len(patch[rows]))]}))
        caches.append(FeatureCache(tmp_path / name))
    cfg = load_probe_config(None, ["optim.iterations=120", "normals.upsample=1", f"normals.loss={loss}"],
                            task="normals", progress=False, num_vis=1)
    head = normals_probe.train_linear(caches[0], cfg, torch.device("cpu"))
    metrics, vis = normals_probe.evaluate(head, caches[1], NormalsArrays(full[16:].transpose(0, 3, 1, 2)), cfg)
    untrained = normals_probe.LinearNormalsHead(caches[1].channels, normals_probe.out_channels(cfg), 1)
    baseline, _ = normals_probe.evaluate(untrained, caches[1], NormalsArrays(full[16:].transpose(0, 3, 1, 2)), cfg)
    assert metrics["all"]["median"] < 3 and metrics["all"]["mean"] < 0.5 * baseline["all"]["mean"], metrics
    assert metrics["all"]["images"] == 8 and vis[0].pred.shape == (16, 16, 3)


def test_cli_normals_on_scenes_writes_results_with_object_metrics(scenes, tmp_path, capsys):  # noqa: F811
    assert main(["normals", "--random-init", "tiny", "--dataset", f"scenes:{scenes}", "--resolution", "112",
                 "--iterations", "20", "--mask", "objects", "--out", str(tmp_path / "out"),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--num-vis", "2"]) == 0
    name = next((tmp_path / "out").glob("normals-scenes-fast-random-tiny-*-s0.json")).stem  # *: identity tag
    result = json.loads((tmp_path / "out" / f"{name}.json").read_text())
    assert result["task"] == "normals" and result["details"]["head"] == "lin1"
    for part in ("all", "objects"):
        m = result["metrics"][part]
        assert m["images"] == 8 and 0 <= m["median"] <= 180 and 0 <= m["pct_30"] <= 100
    assert (tmp_path / "out" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "| objects |" in capsys.readouterr().out


def test_a_mirrored_normal_map_has_its_x_component_negated():
    from tips_eval.features import resize_normals

    n = torch.zeros(3, 2, 3)
    n[:, 0, 0] = torch.tensor([0.6, 0.0, -0.8])
    flipped = resize_normals(n, (2, 3), flip=True)
    assert torch.equal(flipped[:, 0, 2], torch.tensor([-0.6, 0.0, -0.8])) and flipped[:, 0, 0].abs().sum() == 0
    assert resize_normals(n, (4, 6)).shape == (3, 4, 6) and torch.equal(resize_normals(n, (4, 6))[:, 1, 1], n[:, 0, 0])
