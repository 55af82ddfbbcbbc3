"""tips-extract: every readable image is encoded exactly as ``model.encode_image`` would; broken ones are named and skipped."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

import tips
from tips.cli.extract import main
from tips.inference.extract import ExtractOptions, NoReadableImages, check_resolution, extract, load_features
from tips.io.sources import find_images
from tips.io import expand_shards
from tips.models.preprocess import Preprocess

skdata = pytest.importorskip("skimage.data")

PHOTOS = ["astronaut.png", "coffee.jpg", "chelsea.jpg", "rocket.jpg", "camera.png"]
ODD = ["odd/rgba.png", "odd/palette.png", "odd/cmyk.jpg", "odd/gray16.png", "odd/gray.png", "odd/exif-rotated.jpg",
       "odd/animated.gif"]
BROKEN = {"broken/truncated.jpg": "truncated", "broken/text.jpg": "not an image", "broken/huge.png": "max-pixels"}
MAX_PIXELS = 1_000_000
RED = (200, 30, 30)


def _write_images(root: Path) -> None:
    """scikit-image photos, odd modes and broken files under root."""
    (root / "odd").mkdir(parents=True)
    (root / "broken").mkdir()
    photos = {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "chelsea": skdata.chelsea(),
              "rocket": skdata.rocket(), "camera": skdata.camera()}
    for name in PHOTOS:
        Image.fromarray(photos[Path(name).stem]).save(root / name)
    chelsea = Image.fromarray(photos["chelsea"])  # 451 wide x 300 high
    rgba = chelsea.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "odd/rgba.png")
    chelsea.quantize(16).save(root / "odd/palette.png", transparency=0)
    chelsea.convert("CMYK").save(root / "odd/cmyk.jpg")
    Image.fromarray((np.asarray(chelsea.convert("L"), np.uint16) * 257)).save(root / "odd/gray16.png")
    assert Image.open(root / "odd/gray16.png").mode == "I;16"
    chelsea.convert("L").save(root / "odd/gray.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90°: 300 wide x 451 high
    chelsea.save(root / "odd/exif-rotated.jpg", exif=exif)
    frames = [Image.new("RGB", (98, 70), RED), Image.new("RGB", (98, 70), (30, 200, 30))]
    frames[0].save(root / "odd/animated.gif", save_all=True, append_images=frames[1:], duration=100)
    (root / "broken/truncated.jpg").write_bytes((root / "coffee.jpg").read_bytes()[:5000])
    (root / "broken/text.jpg").write_text("this is not a JPEG")
    Image.new("RGB", (1100, 1000), (10, 20, 30)).save(root / "broken/huge.png")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    _write_images(root)
    return root


@pytest.fixture(scope="module")
def model() -> tips.TIPS:
    torch.manual_seed(0)  # what --random-init tiny --seed 0 does
    return tips.create_model("tiny").eval()


def _reference(model: tips.TIPS, paths: list[Path], size: int = 224, keep_aspect: bool = False):
    """encode_image on each image preprocessed as the extractor documents (one image per batch)."""
    pre = Preprocess(size, model.patch_size, keep_aspect)
    with torch.inference_mode():
        return [model.encode_image(pre(Image.open(p))[None]) for p in paths]


def test_cli_encodes_every_readable_image_and_names_each_broken_one(image_dir, model, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main([str(image_dir), "-o", str(out), "--random-init", "tiny", "--seed", "0", "--patch-tokens", "--pca", "4",
               "--max-pixels", str(MAX_PIXELS), "--batch-size", "4", "--num-workers", "0", "--no-progress"])
    assert rc == 0
    captured = capsys.readouterr()
    readable = sorted(PHOTOS + ODD)
    feats = load_features(out)
    assert sorted(feats.ids) == readable and feats.ids == sorted(feats.ids)  # square mode keeps the input order
    with safe_open(str(out / "features-00000.safetensors"), "pt") as f:
        assert f.metadata()["count"] == str(len(readable))
    skipped = {s["id"]: s["reason"] for s in json.loads((out / "skipped.json").read_text())}
    assert set(skipped) == set(BROKEN)
    assert "truncated" in skipped["broken/truncated.jpg"].lower()
    assert "not an image" in skipped["broken/text.jpg"]
    assert "1100x1000" in skipped["broken/huge.png"] and "max-pixels" in skipped["broken/huge.png"]
    for name in BROKEN:
        assert f"skipped {name}" in captured.err and f"skipped {name}" in captured.out
    assert f"{len(readable)} images encoded, {len(BROKEN)} skipped" in captured.out
    assert Image.open(out / "pca.png").size[0] > 0

    refs = _reference(model, [image_dir / i for i in feats.ids])
    torch.testing.assert_close(feats.cls_alt, torch.cat([r.cls_alt for r in refs]), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.cls_syn, torch.cat([r.cls_syn for r in refs]), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.patch_tokens, torch.cat([r.patch_tokens for r in refs]), atol=1e-5, rtol=0)

    # the first frame of the animated GIF is plain red
    red = torch.tensor(RED, dtype=torch.float32).div(255).view(1, 3, 1, 1).expand(1, 3, 224, 224)
    with torch.inference_mode():
        expected = model.encode_image(red).cls_alt[0]
    torch.testing.assert_close(feats.cls_alt[feats.ids.index("odd/animated.gif")], expected, atol=1e-4, rtol=0)


def test_console_script_runs_in_a_subprocess(image_dir, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two photos\n{image_dir / 'astronaut.png'}\n{image_dir / 'camera.png'}\n")
    script = shutil.which("tips-extract")
    cmd = [script] if script else [sys.executable, "-m", "tips.inference.extract"]
    proc = subprocess.run(cmd + [str(listing), "-o", str(tmp_path / "out"), "--random-init", "tiny", "--no-progress",
                                 "--num-workers", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "2 images encoded, 0 skipped" in proc.stdout and "images/s" in proc.stdout
    assert len((tmp_path / "out/ids.jsonl").read_text().splitlines()) == 2


def _write_shard(path: Path, samples: dict[str, tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, (ext, data) in samples.items():
            for name, payload in ((f"{key}.{ext}", data), (f"{key}.txt", b"a caption")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_webdataset_shards_in_sharded_output_with_workers(image_dir, model, tmp_path):
    files = [image_dir / p for p in PHOTOS + ["odd/cmyk.jpg"]]
    exts = ["png", "jpg", "jpg", "jpg", "png", "jpg"]
    samples = [(f"s{i:03d}", (ext, f.read_bytes())) for i, (ext, f) in enumerate(zip(exts, files))]
    _write_shard(tmp_path / "shards-000.tar", dict(samples[:3]))
    _write_shard(tmp_path / "shards-001.tar", dict(samples[3:]))
    source = str(tmp_path / "shards-{000..001}.tar")
    assert [r.id for r in find_images(source)] == [k for k, _ in samples]

    out = tmp_path / "out"
    options = ExtractOptions(shard_size=4, num_workers=2, batch_size=3, resolution=112, patch_tokens=True,
                             progress=False)
    result = extract(source, out, model, options)
    index = json.loads((out / "index.json").read_text())
    # a tar shard is one chunk of work (whatever --shard-size says): one output file per input shard
    assert [(s["file"], s["start"], s["count"]) for s in index["shards"]] == [
        ("features-00000.safetensors", 0, 3), ("features-00001.safetensors", 3, 3)]
    feats = load_features(out)
    assert feats.ids == result.ids == [k for k, _ in samples]
    assert feats.patch_tokens.shape == (6, 8, 8, model.width)
    refs = _reference(model, files, size=112)
    torch.testing.assert_close(feats.cls_alt, torch.cat([r.cls_alt for r in refs]), atol=1e-5, rtol=0)


def test_keep_aspect_keeps_each_grid_and_applies_exif_orientation(image_dir, model, tmp_path):
    names = ["astronaut.png", "coffee.jpg", "odd/exif-rotated.jpg", "rocket.jpg"]
    options = ExtractOptions(resolution=112, keep_aspect=True, patch_tokens=True, batch_size=2, progress=False)
    result = extract([image_dir / n for n in names], tmp_path / "out", model, options)
    feats = load_features(tmp_path / "out")
    assert sorted(feats.ids) == sorted(str(image_dir / n) for n in names) and result.count == 4
    grids = {Path(i).name: tuple(p.shape[:2]) for i, p in zip(feats.ids, feats.patch_tokens)}
    # coffee 600x400 → 168x112; rocket 640x427 → 168x112; exif-rotated 300x451 displayed → 112x168 (h, w)
    assert grids == {"astronaut.png": (8, 8), "coffee.jpg": (8, 12), "exif-rotated.jpg": (12, 8), "rocket.jpg": (8, 12)}
    refs = dict(zip(feats.ids, _reference(model, [Path(i) for i in feats.ids], 112, keep_aspect=True)))
    for i, id_ in enumerate(feats.ids):
        torch.testing.assert_close(feats.cls_syn[i], refs[id_].cls_syn[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(feats.patch_tokens[i], refs[id_].patch_tokens[0], atol=1e-5, rtol=0)


def test_pooled_patches_in_float16(image_dir, model, tmp_path):
    paths = [image_dir / "astronaut.png", image_dir / "chelsea.jpg"]
    extract(paths, tmp_path, model, ExtractOptions(pool_patches=4, save_dtype="float16", progress=False))
    feats = load_features(tmp_path)
    assert feats.patch_tokens.dtype == torch.float16 and feats.patch_tokens.shape == (2, 4, 4, model.width)
    ref = torch.cat([r.patch_tokens for r in _reference(model, paths)])  # (2, 16, 16, D)
    pooled = F.avg_pool2d(ref.permute(0, 3, 1, 2), 4).permute(0, 2, 3, 1)
    torch.testing.assert_close(feats.patch_tokens.float(), pooled, atol=2e-2, rtol=1e-2)


def test_text_prompts_become_text_embeddings(image_dir, model, tmp_path):
    prompts = ["a photo of a cat", "an astronaut", "a rocket on the launch pad"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n\n")
    options = ExtractOptions(texts=tmp_path / "prompts.txt", progress=False)
    result = extract(image_dir / "chelsea.jpg", tmp_path / "out", model, options)
    with safe_open(str(result.text), "pt") as f:
        assert json.loads(f.metadata()["prompts"]) == prompts
        text = f.get_tensor("text")
    with torch.inference_mode():
        torch.testing.assert_close(text, model.encode_text(prompts), atol=1e-5, rtol=0)


def test_no_readable_image_is_an_error_that_lists_the_reasons(image_dir, model, tmp_path, capsys):
    with pytest.raises(NoReadableImages, match="all 2 skipped"):
        extract([image_dir / "broken/text.jpg", image_dir / "broken/truncated.jpg"], tmp_path / "a", model,
                ExtractOptions(progress=False))
    assert len(json.loads((tmp_path / "a/skipped.json").read_text())) == 2
    assert not list((tmp_path / "a").glob("features*.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        extract(tmp_path / "empty", tmp_path / "b", model, ExtractOptions(progress=False))
    assert main([str(tmp_path / "empty"), "-o", str(tmp_path / "b"), "--random-init", "tiny"]) == 1
    assert "no images found" in capsys.readouterr().err


def test_resolution_must_be_a_multiple_of_the_patch_size():
    with pytest.raises(ValueError, match="nearest valid: 448 or 462"):
        check_resolution(450, 14)
    check_resolution(448, 14)


def test_brace_patterns_expand_like_webdataset():
    assert expand_shards("a-{008..010}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar"]
    assert expand_shards("{x,y}/{1..2}") == ["x/1", "x/2", "y/1", "y/2"]
    assert expand_shards("a-{0..1}.tar::b.tar") == ["a-0.tar", "a-1.tar", "b.tar"]
    assert expand_shards("keep-{literal}.tar") == ["keep-{literal}.tar"]


def test_demo_quick_start(tmp_path, capsys):
    assert main(["--demo", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "images encoded, 1 skipped" in out and "broken-on-purpose.jpg" in out
    assert (tmp_path / "pca.png").is_file() and (tmp_path / "text_embeddings.safetensors").is_file()


def test_cli_checks_its_inputs_before_it_builds_the_model(image_dir, tmp_path, capsys, monkeypatch):
    import tips.cli.extract as cli

    def no_model(args):
        raise AssertionError("the model was built")

    monkeypatch.setattr(cli, "model_from_args", no_model)
    out = str(tmp_path / "out")
    assert main([str(tmp_path / "no-such-photos"), "-o", out, "--random-init", "tiny"]) == 1
    assert "no-such-photos: no such file, folder, glob match or shard" in capsys.readouterr().err
    assert main([str(image_dir), "-o", out, "--random-init", "tiny", "--texts", str(tmp_path / "nope.txt")]) == 1
    assert "--texts" in (err := capsys.readouterr().err) and "nope.txt: no such file" in err
    assert main([str(image_dir), "-o", out, "--random-init", "tiny"]) == 1  # a good source reaches the model
    assert "the model was built" in capsys.readouterr().err
