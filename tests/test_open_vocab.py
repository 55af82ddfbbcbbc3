"""Open-vocabulary segmentation: the library against an independent implementation of the notebook's steps,
``tips-predict open-vocab`` on scikit-image photos, the background threshold, presets, and the eight loaders."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata

import tips
from tips.cli.predict import main as predict_main
from tips.inference import open_vocab as ov
from tips.inference.loaded import random_model
from tips_eval import zero_shot_seg
from tips_eval.datasets import open_dataset

NAMES = ["road", "a red car", "tree", "sky"]
TEMPLATES = (  # step 3 (docs/open_vocabulary.md), typed again here
    "itap of a {}.", "a bad photo of a {}.", "a origami {}.", "a photo of the large {}.", "a {} in a video game.",
    "art of the {}.", "a photo of the small {}.", "a photo of many {}.", "a photo of {}s.",
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = tips.create_model("tiny", **{"vision.depth": 2, "text.depth": 1}).eval()
    with torch.no_grad():  # LayerScale ≠ 1, so a readout that skipped ls1 / ls2 would not agree
        for blk in m.vision.blocks:
            blk.ls1.gamma.normal_(1.0, 0.3)
            blk.ls2.gamma.normal_(1.0, 0.3)
    return m


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)())


# ----------------------------------------------------------------------------- the independent reference
def _ref_resize(image: Image.Image, size: int) -> torch.Tensor:
    """Step 1: PIL bicubic on the uint8 image, short side = size, long side int(size * long / short)."""
    w, h = image.size
    if min(w, h) != size:
        if h >= w:
            image = image.resize((size, int(size * h / w)), resample=Image.Resampling.BICUBIC)
        else:
            image = image.resize((int(size * w / h), size), resample=Image.Resampling.BICUBIC)
    return torch.tensor(np.array(image.convert("RGB")), dtype=torch.float32).permute(2, 0, 1) / 255.0


def _ref_patches(model, img: torch.Tensor) -> torch.Tensor:
    """Step 2 on (3, H, W): all blocks but the last, then the value vectors in place of attention → (h, w, D)."""
    vit, p = model.vision, model.patch_size
    H, W = img.shape[-2:]
    Hp, Wp = -(-H // p) * p, -(-W // p) * p
    x = img[None]
    if (Hp, Wp) != (H, W):
        x = F.interpolate(x, size=(Hp, Wp), mode="bicubic", align_corners=False)
    tokens = vit.embed(x)
    for blk in list(vit.blocks)[:-1]:
        tokens = blk(tokens)
    last = vit.blocks[-1]
    D = tokens.shape[-1]
    qkv = last.attn.qkv(last.norm1(tokens)).reshape(1, tokens.shape[1], 3, last.attn.num_heads, D // last.attn.num_heads)
    values = qkv[:, :, 2].reshape(1, tokens.shape[1], D)
    tokens = tokens + last.ls1(last.attn.proj(values))
    tokens = tokens + last.ls2(last.mlp(last.norm2(tokens)))
    return vit.norm(tokens)[0, 2:].reshape(Hp // p, Wp // p, D)


def _ref_text(model, names) -> torch.Tensor:
    """Step 3: per class, normalise each prompt embedding, average over the templates, normalise again."""
    rows = []
    for name in names:
        e = model.encode_text([t.replace("{}", name) for t in TEMPLATES])
        e = e / e.norm(dim=-1, keepdim=True)
        m = e.mean(0)
        rows.append(m / m.norm())
    return torch.stack(rows)


def _ref_cos(model, img, text) -> torch.Tensor:
    f = _ref_patches(model, img)
    f = f / f.norm(dim=-1, keepdim=True)
    return torch.einsum("hwd,cd->chw", f, text)


def _ref_scores(model, img, text, mode, side, stride) -> torch.Tensor:
    """Step 4: whole → cosines; slide → averaged per-window softmax of the window-resized cosines."""
    if mode == "whole":
        return _ref_cos(model, img, text)
    _, H, W = img.shape
    acc = torch.zeros(text.shape[0], H, W)
    hits = torch.zeros(H, W)
    ys, y = [], 0
    while True:
        ys.append(min(y, H - side))
        if y + side >= H:
            break
        y += stride
    xs, x = [], 0
    while True:
        xs.append(min(x, W - side))
        if x + side >= W:
            break
        x += stride
    for y0 in ys:
        for x0 in xs:
            cos = _ref_cos(model, img[:, y0:y0 + side, x0:x0 + side], text)
            cos = F.interpolate(cos[None], size=(side, side), mode="bilinear", align_corners=False)[0]
            acc[:, y0:y0 + side, x0:x0 + side] += torch.softmax(cos, dim=0)
            hits[y0:y0 + side, x0:x0 + side] += 1
    return acc / hits


def _ref_labels(model, image, names, mode, size, stride, label_size):
    with torch.no_grad():
        img = _ref_resize(image, size)
        scores = _ref_scores(model, img, _ref_text(model, names), mode, size, stride)
        pred = F.interpolate(scores[None], size=label_size, mode="bilinear", align_corners=False)[0].argmax(0)
    return scores, pred


def _ref_miou(preds, targets, C):
    """Steps 6-7: confusion over valid pixels, IoU = diag / (row + col − diag + 1e-10), mean where union > 0."""
    conf = torch.zeros(C, C, dtype=torch.float64)
    for p, t in zip(preds, targets):
        valid = t != 255
        for a, b in zip(t[valid].tolist(), p[valid].tolist()):
            conf[a, b] += 1
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    iou = inter / (union + 1e-10)
    return 100 * iou[union > 0].mean().item()


# ----------------------------------------------------------------------------- protocol parity
@pytest.mark.parametrize("mode", ["slide", "whole"])
def test_probe_equals_an_independent_implementation_of_the_official_steps(model, mode):
    size, stride = 56, 42  # 56 is not the model's 224: the geometry is the protocol's, scaled down for the CPU
    options = ov.OpenVocabOptions(mode=mode, size=size, window=size, stride=stride)
    gen = torch.Generator().manual_seed(0)
    # 600x400 and 451x300 (long side 84 at 56), and 512x380 (long side 75: whole resizes it up to the patch multiple 84)
    images = [_photo("coffee"), _photo("chelsea"), _photo("astronaut").crop((0, 0, 512, 380))]
    targets = []
    for im in images:
        t = torch.randint(0, len(NAMES), (im.height, im.width), generator=gen)
        t[:5] = 255
        targets.append(t)
    ref_preds = []
    for im, t in zip(images, targets):
        ref_scores, ref_pred = _ref_labels(model, im, NAMES, mode, size, stride, tuple(t.shape))
        got = ov.open_vocab_segment(model, im, NAMES, options, size=tuple(t.shape))
        assert got.scores.shape == ref_scores.shape
        torch.testing.assert_close(got.scores, ref_scores, atol=1e-4, rtol=0)
        assert (got.labels == ref_pred).float().mean() >= 0.999
        ref_preds.append(ref_pred)
    metrics = zero_shot_seg.evaluate_zero_shot_seg(model, zip(images, targets), NAMES, options, progress=False)
    assert metrics["mIoU"] == pytest.approx(_ref_miou(ref_preds, targets, len(NAMES)), abs=0.05)
    assert metrics["num_images"] == 3


def test_preprocessing_is_pil_bicubic_on_uint8_with_the_long_side_rounded_down():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (448, 597, 3), dtype=np.uint8))
    assert ov.short_side_resize(image, 448) is image  # already 448: untouched
    small = image.resize((300, 400))  # 300 wide, 400 high
    resized = ov.prepare_image(small, 56)
    assert resized.shape == (3, int(56 * 400 / 300), 56)  # 74.67 → 74, not rounded to 75
    torch.testing.assert_close(resized, _ref_resize(small, 56))
    fast = ov.prepare_image(small, 56, resize="torch")
    assert fast.shape == resized.shape and not torch.equal(fast, resized)  # the fast path really differs


def test_slide_with_one_window_equals_whole_resized_to_the_window(model):
    image = _photo("astronaut")  # square
    slide = ov.open_vocab_segment(model, image, NAMES, ov.OpenVocabOptions(mode="slide", size=56, window=56))
    whole = ov.open_vocab_segment(model, image, NAMES, ov.OpenVocabOptions(mode="whole", size=56))
    assert slide.scores.shape == (4, 56, 56) and whole.scores.shape == (4, 4, 4)
    assert torch.equal(slide.scores.argmax(0), ov.resized_argmax(whole.scores, (56, 56)))


def test_synonyms_score_a_class_by_its_best_name(model):
    text = ov.encode_classes(model, [("car", "automobile"), "sky"])
    alone = ov.encode_classes(model, ["car", "automobile", "sky"])
    images = torch.rand(1, 3, 28, 42)
    with torch.no_grad():
        both = ov.patch_cosines(model, images, text)
        each = ov.patch_cosines(model, images, alone)
    torch.testing.assert_close(both[:, 0], each[:, :2].amax(1))
    torch.testing.assert_close(both[:, 1], each[:, 2])
    assert text.names == ["car", "sky"]


def test_chunked_resize_helpers_equal_the_full_map():
    scores = torch.randn(7, 5, 6)
    full = F.interpolate(scores[None], size=(40, 33), mode="bilinear", align_corners=False)[0]
    assert torch.equal(ov.resized_argmax(scores, (40, 33)), full.argmax(0))
    torch.testing.assert_close(ov.resized_max_probability(scores, (40, 33), 30.0), (30 * full).softmax(0).amax(0))


def test_window_starts_clamp_the_last_window():
    assert ov.window_starts(448, 448, 336) == [0]
    assert ov.window_starts(597, 448, 336) == [0, 149]
    assert ov.window_starts(1200, 448, 336) == [0, 336, 672, 752]
    assert ov.window_starts(40, 56, 42) == [0]


# ----------------------------------------------------------------------------- tips-predict open-vocab
@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for name in ("coffee", "chelsea"):
        _photo(name).save(root / f"{name}.png")
    return root


def _cli(photos, out, *extra):
    argv = ["open-vocab", str(photos), "--random-init", "tiny", "--resolution", "56", "--device", "cpu",
            "--no-progress", "-o", str(out), *extra]
    assert predict_main(argv) == 0


def _labels(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "P"
        return np.asarray(im).copy()


@pytest.mark.parametrize("how", ["classes", "classes-file", "preset"])
def test_open_vocab_command_writes_labels_pictures_and_a_sheet(photos, tmp_path, how):
    out = tmp_path / "out"
    if how == "classes":
        _cli(photos, out, "--classes", "road, car|automobile, tree, sky", "--probabilities")
        classes = [("road",), ("car", "automobile"), ("tree",), ("sky",)]
    elif how == "classes-file":
        (tmp_path / "c.txt").write_text("# my classes\ncat, kitten\ncup\ntable\n")
        _cli(photos, out, "--classes-file", str(tmp_path / "c.txt"), "--mode", "whole")
        classes = [("cat", "kitten"), ("cup",), ("table",)]
    else:
        _cli(photos, out, "--preset", "ade20k")
        classes = list(ov.load_preset("ade20k").synonyms)
    record = json.loads((out / "classes.json").read_text())
    assert [tuple(c["synonyms"]) for c in record["classes"]] == classes
    assert (out / "contact_sheet.png").is_file()
    model = random_model("tiny", seed=0)
    mode = "whole" if how == "classes-file" else "slide"
    for name in ("coffee", "chelsea"):
        image = Image.open(photos / f"{name}.png")
        labels = _labels(out / f"{name}.png.labels.png")
        assert labels.shape == (image.height, image.width)
        picture = Image.open(out / f"{name}.png.open-vocab.png")
        assert picture.height >= image.height and picture.width > 2 * image.width  # image | overlay | legend
        seg = ov.open_vocab_segment(model, image, classes, ov.OpenVocabOptions(mode=mode, size=56))
        assert np.array_equal(labels, ov.resized_argmax(seg.scores, labels.shape).numpy())
    if how == "classes":
        from safetensors.torch import load_file

        probs = load_file(str(out / "coffee.png.probabilities.safetensors"))["probabilities"]
        assert probs.shape == (4, 400, 600)
        torch.testing.assert_close(probs.float().sum(0), torch.ones(400, 600), atol=1e-2, rtol=0)


def test_background_threshold_turns_exactly_the_less_likely_pixel_into_none(photos, tmp_path):
    model = random_model("tiny", seed=0)
    image = Image.open(photos / "coffee.png")
    classes = ["road", "car", "tree", "sky"]
    seg = ov.open_vocab_segment(model, image, classes, ov.OpenVocabOptions(size=56, logit_scale=200.0))
    top = seg.probabilities().amax(0)  # (H, W) highest class probability of each pixel
    values = torch.unique(top)
    gaps = values[1:] - values[:-1]
    middle = slice(len(values) // 4, 3 * len(values) // 4)  # a wide gap in the middle of the range
    k = middle.start + int(gaps[middle].argmax())
    p1, p2 = values[k].item(), values[k + 1].item()
    threshold = (p1 + p2) / 2
    assert p1 < threshold < p2
    first = tuple(int(i) for i in (top == values[k]).nonzero()[0])
    second = tuple(int(i) for i in (top == values[k + 1]).nonzero()[0])
    _cli(photos, tmp_path / "bg", "--classes", ", ".join(classes), "--background-threshold", str(threshold),
         "--logit-scale", "200")
    labels = _labels(tmp_path / "bg" / "coffee.png.labels.png")
    assert labels[first] == ov.NONE_ID and labels[second] == int(seg.labels[second])
    assert np.array_equal(labels == ov.NONE_ID, (top < threshold).numpy())
    assert 0 < (labels == ov.NONE_ID).mean() < 1


def test_open_vocab_command_refuses_unclear_class_choices(photos, tmp_path, capsys):
    assert predict_main(["open-vocab", str(photos), "--random-init", "tiny", "-o", str(tmp_path)]) == 1
    assert "exactly one of --classes, --classes-file, --preset" in capsys.readouterr().err
    assert predict_main(["open-vocab", str(photos), "--random-init", "tiny", "--preset", "nope", "-o", str(tmp_path)]) == 1
    assert "unknown open-vocabulary preset 'nope'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- presets and loaders
def test_every_preset_names_its_source_and_its_class_count():
    counts = {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco_object": 81, "coco_stuff171": 171,
              "cityscapes": 19, "ade20k": 150}
    assert sorted(ov.preset_names()) == sorted(counts)
    for name, count in counts.items():
        p = ov.load_preset(name)
        assert len(p.synonyms) == count and p.follows
        assert (p.background_class == 0) == (p.background_threshold is not None)
    assert ov.load_preset("ade20k").class_names == list(tips.ADE20K_CLASSES)  # the notebook's names
    assert len(ov.load_preset("voc21").synonyms[0]) > 1  # SCLIP's background words


def _png(path, array, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array.astype(np.uint8))
    if mode == "P":  # VOC's labels are palette PNGs: the index is the class
        im.putpalette(np.random.default_rng(0).integers(0, 256, 768).tolist())
    assert im.mode == mode
    im.save(path)


def _jpg(path, h=12, w=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _labels_with(values, h=12, w=16):
    arr = np.zeros((h, w), np.int64)
    arr.flat[: len(values)] = values
    return arr


@pytest.mark.parametrize("kind", ["voc21", "voc20", "context60", "context59", "coco-object", "coco-stuff",
                                  "cityscapes", "ade20k"])
def test_each_benchmark_loader_reads_its_released_layout(tmp_path, kind):
    raw = {"voc21": [0, 1, 20, 255], "voc20": [0, 1, 20, 255], "context60": [0, 1, 59, 255],
           "context59": [0, 1, 59, 255], "coco-object": [0, 1, 80, 255], "coco-stuff": [0, 1, 170, 255],
           "cityscapes": [0, 1, 18, 255], "ade20k": [0, 1, 150, 255]}[kind]
    expected = {"voc20": [255, 0, 19, 255], "context59": [255, 0, 58, 255], "ade20k": [255, 0, 149, 255]}.get(kind, raw)
    label = _labels_with(raw)
    if kind in ("voc21", "voc20"):
        root = tmp_path / "VOCdevkit" / "VOC2012"
        (root / "ImageSets" / "Segmentation").mkdir(parents=True)
        (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
        _jpg(root / "JPEGImages" / "2007_000033.jpg")
        _png(root / "SegmentationClass" / "2007_000033.png", label, "P")
        spec = f"{kind}:{tmp_path}"
    elif kind.startswith("context"):
        root = tmp_path / "VOCdevkit" / "VOC2010"
        (root / "ImageSets" / "SegmentationContext").mkdir(parents=True)
        (root / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000002\n")
        _jpg(root / "JPEGImages" / "2008_000002.jpg")
        _png(root / "SegmentationClassContext" / "2008_000002.png", label)
        spec = f"{kind}:{tmp_path / 'VOCdevkit'}"
    elif kind.startswith("coco"):
        root = tmp_path / "coco_stuff164k"
        _jpg(root / "images" / "val2017" / "000000000139.jpg")
        suffix = "_instanceTrainIds.png" if kind == "coco-object" else "_labelTrainIds.png"
        _png(root / "annotations" / "val2017" / f"000000000139{suffix}", label)
        spec = f"{kind}:{tmp_path}"
    elif kind == "cityscapes":
        _jpg(tmp_path / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png")
        _png(tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelTrainIds.png", label)
        spec = f"cityscapes:{tmp_path}"
    else:
        root = tmp_path / "ADEChallengeData2016"
        _jpg(root / "images" / "validation" / "ADE_val_00000001.jpg")
        _png(root / "annotations" / "validation" / "ADE_val_00000001.png", label)
        spec = f"ade20k:{tmp_path}"
    dataset = open_dataset(spec, "val")
    sample = dataset[0]
    assert len(dataset) == 1 and sample.image.size == (16, 12)
    assert sample.seg.flatten()[:4].tolist() == expected
    preset = ov.load_preset(zero_shot_seg.KIND_PRESETS[kind])
    assert len(dataset.info.class_names) == len(preset.synonyms)


def test_a_label_outside_the_classes_names_the_file(tmp_path):
    _jpg(tmp_path / "leftImg8bit" / "val" / "ulm" / "ulm_1_leftImg8bit.png")
    _png(tmp_path / "gtFine" / "val" / "ulm" / "ulm_1_gtFine_labelTrainIds.png", _labels_with([19]))
    with pytest.raises(ValueError, match="ulm_1_gtFine_labelTrainIds.png: label 19"):
        open_dataset(f"cityscapes:{tmp_path}", "val")[0]


def test_probe_writes_one_table_for_several_benchmarks(tmp_path, capsys):
    for name in ("a", "b"):
        _jpg(tmp_path / "leftImg8bit" / "val" / "ulm" / f"ulm_{name}_leftImg8bit.png", 40, 60)
        _png(tmp_path / "gtFine" / "val" / "ulm" / f"ulm_{name}_gtFine_labelTrainIds.png",
             np.random.default_rng(1).integers(0, 19, (40, 60)))
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("x\n")
    _jpg(voc / "JPEGImages" / "x.jpg", 30, 50)
    _png(voc / "SegmentationClass" / "x.png", np.random.default_rng(2).integers(0, 21, (30, 50)), "P")
    argv = ["--random-init", "tiny", "--dataset", f"cityscapes:{tmp_path}", "--dataset", f"voc21:{tmp_path}",
            "--resolution", "56", "--device", "cpu", "--no-progress", "-o", str(tmp_path / "r")]
    assert zero_shot_seg.main(argv) == 0
    result = json.loads((tmp_path / "r" / "zero-shot-seg.json").read_text())
    runs = {r["dataset"]: r for r in result["runs"]}
    assert set(runs) == {"cityscapes", "voc21"} and runs["cityscapes"]["metrics"]["num_images"] == 2
    assert runs["voc21"]["settings"]["background_threshold"] == 0.1 and runs["voc21"]["settings"]["logit_scale"] == 65
    assert runs["cityscapes"]["settings"]["stride"] == 42  # 3/4 of the 56 window
    table = (tmp_path / "r" / "zero-shot-seg.md").read_text()
    assert table.count("\n| cityscapes |") == 1 and table.count("\n| voc21 |") == 1
