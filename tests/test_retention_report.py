"""``tips-probe retention``: the probe-change reading, the exact patch-feature cosine, and a run on two checkpoints."""

import subprocess
import sys

import pytest
import torch
from PIL import Image
from test_trainer import env

import tips
from tips_eval.retention import change_reading, main, patch_cosine


def test_change_reading_follows_the_demo_noise_rule():
    assert change_reading(0.40, 0.50, True, 0.01)[0] == "better"
    assert change_reading(0.40, 0.41, True, 0.01)[0] == "none"  # 2.5 % of 0.40 < the 5 % margin
    assert change_reading(1.00, 1.20, False, 0.05)[0] == "worse"  # RMSE up
    assert change_reading(0.10, 0.104, True, 0.01)[0] == "none"  # inside the absolute floor


def test_patch_cosine_is_one_for_the_same_weights_and_drops_when_they_move():
    torch.manual_seed(0)
    model = tips.create_model("tiny_p8", tokenizer="bpe", **{"vision.depth": 1, "text.depth": 1}).eval()
    images = [Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()) for _ in range(3)]
    same = patch_cosine(model, model, images, 32, batch_size=2)
    assert same["mean"] == pytest.approx(1.0, abs=1e-6) and same["num_images"] == 3
    moved = tips.create_model("tiny_p8", tokenizer="bpe", **{"vision.depth": 1, "text.depth": 1}).eval()
    moved.load_state_dict(model.state_dict())
    with torch.no_grad():
        moved.vision.patch_embed.proj.weight.add_(torch.randn_like(moved.vision.patch_embed.proj.weight))
    assert patch_cosine(model, moved, images, 32)["mean"] < 0.999


@pytest.mark.slow
def test_retention_report_runs_on_two_checkpoints_and_prints_a_table(tmp_path, capsys):
    scenes = tmp_path / "scenes"
    made = subprocess.run([sys.executable, "-c", "import sys; from tips_pipelines.scenes import main; sys.exit(main())",
                           "--out", str(scenes), "--num-pretrain", "0", "--num-train", "16", "--num-val", "8",
                           "--resolution", "64"], capture_output=True, text=True, env=env())
    assert made.returncode == 0, made.stderr[-2000:]
    torch.manual_seed(0)
    before = tips.create_model("tiny_p8", tokenizer="bpe", **{"vision.depth": 2, "text.depth": 1})
    tips.save(before, tmp_path / "before")
    with torch.no_grad():
        before.vision.patch_embed.proj.weight.mul_(0.5)
    tips.save(before, tmp_path / "after")
    assert main(["--before", str(tmp_path / "before"), "--after", str(tmp_path / "after"), "--dataset",
                 f"scenes:{scenes}/probe", "--iterations", "5", "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| object-class mIoU |" in printed and "patch-feature cosine" in printed
    assert (tmp_path / "out" / "retention.json").is_file()
