"""tips-probe compression and --dtype/--quantize on a tiny random model: every precision and width is reported."""

import json

import numpy as np
import pytest
from PIL import Image

from tips_eval.cli import main as probe_main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tips_pipelines.scenes import main as scenes_main

    root = tmp_path_factory.mktemp("compression")
    assert scenes_main(["--out", str(root / "scenes"), "--num-train", "8", "--num-val", "4", "--num-pretrain", "0",
                        "--resolution", "56", "--seed", "0", "--num-workers", "1"]) == 0
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (56, 56, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def test_compression_report_covers_every_precision_and_width(data, tmp_path):
    out = tmp_path / "report"
    argv = ["compression", "--random-init", "tiny", "--resolution", "56", "--num-workers", "0", "--no-progress",
            "--device", "cpu", "--dims", "192,96,24", "--retrieval", str(data / "scenes" / "probe" / "val"),
            "--knn-train", str(data / "train"), "--knn-val", str(data / "val"), "--zero-shot", str(data / "val"),
            "--dense", f"scenes:{data / 'scenes' / 'probe'}", "--dense-tasks", "segmentation",
            "--dense-overrides", "optim.iterations=3", "features.resolution=56",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert probe_main(argv) == 0
    result = json.loads((out / "compression.json").read_text())
    rows = {(r["precision"], r["width"]): r for r in result["rows"]}
    assert set(rows) == {(p, w) for p in ("fp32", "bf16", "int8") for w in (192, 96, 24)}
    for (precision, width), row in rows.items():
        for metric in ("retrieval i2t R@1", "retrieval t2i R@1", "kNN top-1", "zero-shot top-1"):
            assert 0.0 <= row[metric] <= 100.0, (precision, width, metric)
        assert any(k.startswith("segmentation ") for k in row) == (width == 192)
    assert (out / "compression.png").stat().st_size > 0
    assert "| int8 | 24 |" in (out / "compression.md").read_text()


def test_probe_global_tasks_take_dtype_and_quantize(data, tmp_path):
    for flags in (["--dtype", "bfloat16"], ["--quantize", "int8"]):
        argv = ["knn", "--random-init", "tiny", "--resolution", "56", "--num-workers", "0", "--no-progress",
                "--device", "cpu", "--train", str(data / "train"), "--val", str(data / "val"), "--out", str(tmp_path),
                *flags]
        assert probe_main(argv) == 0
        protocol = json.loads((tmp_path / "knn.json").read_text())["protocol"]
        assert protocol["checkpoint"][flags[0].lstrip("-")] == flags[1]


@pytest.mark.filterwarnings("error::UserWarning")  # its one-width picture once drew an empty legend
def test_compression_retrieval_at_full_width_equals_tips_probe_retrieval(data, tmp_path):
    """Same model, same CLS, same captions: the compression report's fp32 full-width row is tips-probe retrieval's
    result (the probe format's caption kind follows --cls in both: CLS2 ↔ synthetic captions)."""
    common = ["--random-init", "tiny", "--resolution", "56", "--num-workers", "0", "--no-progress", "--device", "cpu",
              "--cls", "syn"]
    val = str(data / "scenes" / "probe" / "val")
    assert probe_main(["compression", *common, "--precisions", "fp32", "--dims", "192", "--retrieval", val,
                       "--out", str(tmp_path / "c")]) == 0
    assert probe_main(["retrieval", *common, "--data", val, "--out", str(tmp_path / "r")]) == 0
    row = json.loads((tmp_path / "c" / "compression.json").read_text())["rows"][0]
    result = json.loads(next((tmp_path / "r").glob("retrieval*.json")).read_text())["metrics"]
    assert row["retrieval i2t R@1"] == pytest.approx(result["image_to_text"]["R@1"])
    assert row["retrieval t2i R@1"] == pytest.approx(result["text_to_image"]["R@1"])
    assert result["num_captions"] > result["num_images"]  # synthetic captions: several per image, not one alt-text
