"""tips-predict and tips.predict: every readable photo gets a picture and a raw output, broken files are named and
skipped, the raw files hold exactly what ``DenseHead.predict`` returns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import tips
from tips.formats.dpt import save_pretrained_head
from tips.models.dpt import build_head
from tips.cli.predict import main
from tips.inference.pictures import RANDOM_BANNER, display_size
from tips.models.preprocess import Preprocess

skdata = pytest.importorskip("skimage.data")
RES = 112  # the tiny model's patch 14 → an 8×8 grid, fused map 64×64


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(skdata, name)()).save(root / f"{name}.png")
    (root / "broken").mkdir()
    (root / "broken/text.jpg").write_text("this is not a JPEG")
    (root / "broken/truncated.png").write_bytes((root / "coffee.png").read_bytes()[:3000])
    return root


@pytest.fixture(scope="module")
def model() -> tips.TIPS:
    torch.manual_seed(0)  # what --random-init tiny --seed 0 does
    return tips.create_model("tiny").eval()


def _run(task: str, image_dir: Path, out: Path, *extra: str) -> int:
    return main([task, str(image_dir), "--random-init", "tiny", "--resolution", str(RES), "-o", str(out),
                 "--no-progress", "--num-workers", "0", "--batch-size", "2", *extra])


def _expected(model, head, path: Path, keep_aspect=False) -> torch.Tensor:
    x = Preprocess(RES, model.patch_size, keep_aspect)(Image.open(path))[None]
    return head.predict(model, x)[0]


def test_depth_writes_pictures_16bit_millimetres_and_a_sheet_and_names_broken_files(image_dir, model, tmp_path, capsys):
    torch.manual_seed(1)
    head = build_head("depth", model.width, fusion=32).eval()
    save_pretrained_head(head, tmp_path / "head")
    assert _run("depth", image_dir, tmp_path / "out", "--head", str(tmp_path / "head")) == 0
    printed = capsys.readouterr()
    assert "3 images predicted, 2 skipped" in printed.out
    assert "broken/text.jpg" in printed.err and "broken/truncated.png" in printed.err
    skipped = json.loads((tmp_path / "out/skipped.json").read_text())
    assert sorted(s["id"] for s in skipped) == ["broken/text.jpg", "broken/truncated.png"]
    for name in ("astronaut", "coffee", "chelsea"):
        picture = Image.open(tmp_path / f"out/{name}.png.depth.png")
        photo = Image.open(image_dir / f"{name}.png")
        banner = RANDOM_BANNER  # --random-init: the picture says its weights are random
        assert picture.height == display_size((photo.height, photo.width))[0] + banner  # the photo's shape, not RES
        assert picture.width > 2 * display_size((photo.height, photo.width))[1]
        raw = Image.open(tmp_path / f"out/{name}.png.depth16.png")
        assert raw.mode.startswith("I") and raw.size == (RES, RES)
        want = _expected(model, head, image_dir / f"{name}.png")[0] * 1000
        assert np.abs(np.asarray(raw, dtype=np.float64) - want.numpy()).max() <= 0.5 + 1e-3
    sheet = Image.open(tmp_path / "out/contact_sheet.png")
    assert sheet.width * sheet.height >= 3 * picture.width * picture.height  # all three pictures, unscaled


def test_normals_and_segmentation_raw_outputs_keep_aspect(image_dir, model, tmp_path):
    torch.manual_seed(2)
    seg = build_head("segmentation", model.width, 150, fusion=32).eval()
    save_pretrained_head(seg, tmp_path / "seg")
    assert _run("segmentation", image_dir, tmp_path / "s", "--head", str(tmp_path / "seg"), "--keep-aspect") == 0
    raw = load_file(str(tmp_path / "s/chelsea.png.segmentation.safetensors"))
    want = _expected(model, seg, image_dir / "chelsea.png", keep_aspect=True)  # chelsea is 451×300 → 112×168
    assert raw["logits"].shape == (150, 112, 168) and raw["argmax"].dtype == torch.int16
    assert torch.allclose(raw["logits"].float(), want, atol=2e-2, rtol=1e-3)
    assert (raw["argmax"].long() != want.argmax(0)).float().mean() < 1e-3  # near-ties may flip between batchings
    save_pretrained_head(build_head("normals", model.width, fusion=32), tmp_path / "nh")
    assert _run("normals", image_dir, tmp_path / "n", "--head", str(tmp_path / "nh")) == 0
    normals = load_file(str(tmp_path / "n/coffee.png.normals.safetensors"))["normals"]
    assert normals.shape == (3, RES, RES) and torch.allclose(normals.norm(dim=0), torch.ones(()), atol=1e-4)


def test_wrong_head_task_and_unreadable_sources_fail_clearly(image_dir, model, tmp_path, capsys):
    save_pretrained_head(build_head("depth", model.width, fusion=32), tmp_path / "depth")
    assert _run("normals", image_dir, tmp_path / "o", "--head", str(tmp_path / "depth")) == 1
    assert "is a depth head" in capsys.readouterr().err
    assert _run("depth", image_dir / "broken", tmp_path / "o2", "--random-head") == 1
    assert "no readable images: all 2 skipped" in capsys.readouterr().err


def test_python_predict_accepts_tensors_and_pil_images(image_dir, model):
    head = build_head("normals", model.width, fusion=32).eval()
    photo = Image.open(image_dir / "astronaut.png")
    out = tips.predict(model, head, [photo, photo], resolution=RES)
    assert out.shape == (2, 3, RES, RES)
    x = Preprocess(RES, model.patch_size)(photo)[None]
    assert torch.allclose(tips.predict(model, head, x)[0], out[0], atol=1e-5)


@pytest.mark.parametrize("flags", [("--quantize", "int8"), ("--dtype", "bfloat16")])
def test_reduced_precision_flags_change_the_computation_but_not_the_answer(image_dir, tmp_path, flags):
    torch.manual_seed(3)
    head = build_head("normals", 192, fusion=32).eval()
    save_pretrained_head(head, tmp_path / "head")
    assert _run("normals", image_dir, tmp_path / "full", "--head", str(tmp_path / "head")) == 0
    assert _run("normals", image_dir, tmp_path / "low", "--head", str(tmp_path / "head"), *flags) == 0
    full = load_file(str(tmp_path / "full/coffee.png.normals.safetensors"))["normals"]
    low = load_file(str(tmp_path / "low/coffee.png.normals.safetensors"))["normals"]
    assert not torch.equal(full, low)
    # The error is small beside how much the prediction varies over the image (random heads vary little).
    error, spread = (low - full).abs().mean(), (full - full.mean(dim=(1, 2), keepdim=True)).abs().mean()
    assert error < 0.2 * spread, (error, spread)


def test_a_head_that_does_not_fit_the_model_is_refused_before_any_image_is_read(image_dir, model, tmp_path, capsys,
                                                                               monkeypatch):
    import importlib

    predict = importlib.import_module("tips.inference.predict")  # the module (the package exports a function so named)
    save_pretrained_head(build_head("depth", model.width + 8, fusion=32), tmp_path / "wide")  # another tower's
    save_pretrained_head(build_head("depth", model.width, fusion=32), tmp_path / "depth")

    class NoReading(predict.ImageDataset):
        def __getitem__(self, i):
            raise AssertionError("an image was read")

    monkeypatch.setattr(predict, "ImageDataset", NoReading)
    cli = importlib.import_module("tips.cli.predict")
    real_model = cli.model_from_args
    monkeypatch.setattr(cli, "model_from_args", lambda args: (_ for _ in ()).throw(AssertionError("model built")))
    assert _run("depth", tmp_path / "no-such-photos", tmp_path / "o", "--random-head") == 1  # the source first
    assert "no-such-photos: no such file" in capsys.readouterr().err
    assert _run("depth", image_dir, tmp_path / "o", "--head", str(tmp_path / "no-such-head")) == 1  # the head file
    assert "no-such-head: no such file or folder" in capsys.readouterr().err
    assert _run("normals", image_dir, tmp_path / "o", "--head", str(tmp_path / "depth")) == 1  # its task
    assert "is a depth head" in capsys.readouterr().err
    monkeypatch.setattr(cli, "model_from_args", real_model)
    monkeypatch.setenv("TIPS_DEBUG", "1")  # the error itself, not its line
    with pytest.raises(ValueError, match=rf"the head .*wide does not fit the model: .*width {model.width + 8}, "
                                         rf"the model's is {model.width}"):
        _run("depth", image_dir, tmp_path / "o", "--head", str(tmp_path / "wide"))
    with pytest.raises(ValueError, match="is a depth head"):  # the task too
        _run("normals", image_dir, tmp_path / "o", "--head", str(tmp_path / "depth"))
    with pytest.raises(AssertionError, match="an image was read"):  # the reader is patched where predict reads
        _run("depth", image_dir, tmp_path / "o", "--head", str(tmp_path / "depth"))
