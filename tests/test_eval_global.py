"""Global evaluation tasks: zero-shot classification, retrieval, weighted kNN, zero-shot segmentation.

End-to-end runs use scikit-image's bundled photos with captions written here and an official-format
checkpoint exported in the test; metric functions are checked against hand-computed values.
"""

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata
from torch import nn

import tips
from tips_eval import knn, retrieval, zero_shot, zero_shot_seg
from tips_eval.common import class_embeddings, rank_of_target, topk_accuracy
from tips_eval.global_data import read_caption_pairs, read_image_folder
from tips_eval.templates import OPENAI_TEMPLATES, TCL_TEMPLATES, get_templates, render
from tips.models.vision import ImageFeatures

# skimage photo → (class folder, captions). Only photos bundled with scikit-image (no download).
PHOTOS = {
    "astronaut": ("astronaut", ["an astronaut in a spacesuit in front of a flag", "a smiling woman astronaut"]),
    "coffee": ("cup_of_coffee", ["a cup of coffee on a saucer", "coffee with latte art"]),
    "chelsea": ("cat", ["a tabby cat looking sideways"]),
    "rocket": ("rocket", ["a rocket on the launch pad", "a space shuttle before launch", "a launch tower"]),
    "camera": ("cameraman", ["a black and white photo of a man with a camera on a tripod"]),
    "horse": ("horse", ["the silhouette of a horse"]),
    "coins": ("coins", ["old coins on a dark background", "many coins"]),
    "moon": ("moon", ["the surface of the moon with craters"]),
}


def _photo(name: str, size: int = 96) -> Image.Image:
    arr = getattr(skdata, name)()
    if arr.dtype == bool:
        arr = (~arr).astype(np.uint8) * 255
    im = Image.fromarray(arr)
    im.thumbnail((size, size))
    return im


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    folder = root / "val"
    rows = []
    for name, (cls, captions) in PHOTOS.items():
        (folder / cls).mkdir(parents=True)
        _photo(name).save(folder / cls / f"{name}.png")
        rows.append({"image": f"val/{cls}/{name}.png", "captions": captions})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = tips.create_model("tiny", **{"vision.depth": 2, "text.depth": 2})
    model.set_temperatures(0.01, 0.02)
    return tips.save(model, tmp_path_factory.mktemp("official"), format="official", name="tiny")


def _model_args(ckpt, out, *extra):
    return ["--model", str(ckpt["vision"]), "--text", str(ckpt["text"]), "--tokenizer", "bpe", "--resolution", "112",
            "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--no-progress", "--out", str(out), *extra]


# ----------------------------------------------------------------------------- end to end, official checkpoint
def test_zero_shot_runs_on_skimage_photos_with_an_official_checkpoint(photo_dir, official_checkpoint, tmp_path):
    assert zero_shot.main(["--data", str(photo_dir / "val"), *_model_args(official_checkpoint, tmp_path)]) == 0
    result = json.loads((tmp_path / "zero-shot.json").read_text())
    protocol, metrics = result["protocol"], result["metrics"]
    assert protocol["task"] == "zero-shot" and protocol["templates"] == "openai" and protocol["num_templates"] == 80
    assert protocol["cls"] == "alt" and protocol["resolution"] == 112 and protocol["split"] == "val"
    assert protocol["temperature"] == pytest.approx(0.01)
    assert protocol["checkpoint"]["source"].endswith("tiny_vision.npz")
    assert metrics["num_images"] == len(PHOTOS) and metrics["num_classes"] == len(PHOTOS)
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100
    assert np.asarray(metrics["confusion_matrix"]).sum() == len(PHOTOS)
    assert set(metrics["per_class_top1"]) == {cls.replace("_", " ") for cls, _ in PHOTOS.values()}
    assert "| top-1 |" in (tmp_path / "zero-shot.md").read_text()


def test_zero_shot_logits_match_the_models_own_similarity(photo_dir, official_checkpoint):
    model = tips.load(official_checkpoint["vision"], text=official_checkpoint["text"], tokenizer="bpe")
    folder = read_image_folder(photo_dir / "val")
    images = torch.stack([model.preprocess(Image.open(p)) for p in folder.paths])
    feats = model.encode_image(images)
    for cls in ("alt", "syn", "mean"):
        logits = zero_shot.zero_shot_logits(model, {"alt": feats.cls_alt, "syn": feats.cls_syn}, folder.class_names,
                                            ["a photo of a {}."], cls, progress=False)
        expected = model.similarity(images, [f"a photo of a {n}." for n in folder.class_names], cls=cls)
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_retrieval_runs_on_skimage_photos_with_an_official_checkpoint(photo_dir, official_checkpoint, tmp_path):
    args = ["--data", str(photo_dir / "captions.jsonl"), "--cls", "mean", *_model_args(official_checkpoint, tmp_path)]
    assert retrieval.main(args) == 0
    result = json.loads((tmp_path / "retrieval.json").read_text())
    metrics = result["metrics"]
    assert result["protocol"]["caption_field"] == "captions" and result["protocol"]["cls"] == "mean"
    assert metrics["num_images"] == len(PHOTOS)
    assert metrics["num_captions"] == sum(len(c) for _, c in PHOTOS.values())
    for direction in ("image_to_text", "text_to_image"):
        m = metrics[direction]
        assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 100 and m["mean_rank"] >= 1


def test_knn_runs_on_train_and_val_folders(photo_dir, official_checkpoint, tmp_path):
    train = tmp_path / "train"
    for name, (cls, _) in PHOTOS.items():
        (train / cls).mkdir(parents=True)
        im = _photo(name)
        im.save(train / cls / "a.png")
        im.transpose(Image.FLIP_LEFT_RIGHT).save(train / cls / "b.png")
    args = ["--train", str(train), "--val", str(photo_dir / "val"), "--k", "5", *_model_args(official_checkpoint, tmp_path)]
    assert knn.main(args) == 0
    result = json.loads((tmp_path / "knn.json").read_text())
    assert result["protocol"]["k"] == 5 and result["protocol"]["T"] == 0.07
    assert result["metrics"]["num_train"] == 2 * len(PHOTOS) and result["metrics"]["num_val"] == len(PHOTOS)
    assert 0 <= result["metrics"]["top1"] <= result["metrics"]["top5"] <= 100


# ----------------------------------------------------------------------------- metrics by hand
def test_recall_at_k_with_several_captions_per_image_matches_hand_count():
    S = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.3],
                      [0.5, 0.6, 0.4, 0.7, 0.1],
                      [0.2, 0.3, 0.9, 0.1, 0.8]])  # (images, captions)
    caption_image = torch.tensor([0, 0, 1, 2, 2])
    i2t, t2i = retrieval.retrieval_ranks(torch.eye(3), S.T, caption_image, chunk=2)
    # image 0: best own caption 0.9, no other beats it; image 1: 0.5, 0.6, 0.7 beat 0.4; image 2: 0.9 beats 0.8.
    assert i2t.tolist() == [0, 3, 1]
    assert t2i.tolist() == [0, 2, 2, 2, 0]
    m = retrieval.recall_metrics(i2t)
    assert m["R@1"] == pytest.approx(100 / 3) and m["R@5"] == 100
    assert m["mean_rank"] == pytest.approx(7 / 3) and m["median_rank"] == 2
    m = retrieval.recall_metrics(t2i, ks=(1, 3))
    assert m["R@1"] == pytest.approx(40) and m["R@3"] == 100 and m["mean_rank"] == pytest.approx(2.2)


def test_ties_count_against_the_query_so_a_collapsed_model_scores_zero():
    same = torch.ones(4, 8) / math.sqrt(8)
    i2t, t2i = retrieval.retrieval_ranks(same, same, torch.arange(4))
    assert retrieval.recall_metrics(i2t)["R@1"] == 0 and retrieval.recall_metrics(t2i)["R@1"] == 0
    assert topk_accuracy(torch.zeros(3, 10), torch.tensor([0, 4, 9]))["top1"] == 0


def test_topk_accuracy_and_confusion_matrix_match_hand_count():
    logits = torch.tensor([[5.0, 1, 2, 0, 0, 0, 0],   # true 0: rank 0
                           [5.0, 1, 2, 0, 0, 0, 0],   # true 2: rank 1
                           [0.0, 1, 2, 3, 4, 5, 6],   # true 1: rank 5 (2..6 ahead)
                           [0.0, 1, 2, 3, 4, 5, 6]])  # true 2: rank 4
    targets = torch.tensor([0, 2, 1, 2])
    assert rank_of_target(logits, targets).tolist() == [0, 1, 5, 4]
    m = zero_shot.classification_metrics(logits, targets, list("abcdefg"))
    assert m["top1"] == 25 and m["top5"] == 75  # ranks 0, 1 and 4 are inside the top 5
    assert m["per_class_top1"]["a"] == 100 and m["per_class_top1"]["c"] == 0 and m["per_class_top1"]["d"] is None
    assert m["mean_per_class_top1"] == pytest.approx(100 / 3)
    confusion = torch.tensor(m["confusion_matrix"])
    assert confusion[0, 0] == 1 and confusion[2, 0] == 1 and confusion[1, 6] == 1 and confusion[2, 6] == 1
    assert confusion.sum() == 4


def test_weighted_knn_votes_match_hand_computation():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 1])
    queries = torch.tensor([[1.0, 0.0], [0.28, 0.96]])
    votes = knn.knn_votes(train, labels, queries, num_classes=3, k=3, temperature=0.5, chunk=1)
    e = math.exp
    expected = torch.tensor([[e(1 / 0.5) + e(0.6 / 0.5), e(0.8 / 0.5), 0.0],
                             [e(0.936 / 0.5) + e(0.28 / 0.5), e(0.8 / 0.5), 0.0]])
    torch.testing.assert_close(votes, expected)
    # k beyond the training set uses every training image.
    all_votes = knn.knn_votes(train, labels, queries[:1], num_classes=2, k=20, temperature=1.0)
    torch.testing.assert_close(all_votes, torch.tensor([[e(1) + e(0.6), e(0.8) + e(-1)]]))
    assert topk_accuracy(votes, torch.tensor([0, 1]), (1, 2)) == {"top1": 50.0, "top2": 100.0}


# ----------------------------------------------------------------------------- identical embeddings → perfect scores
class MatchingStub(nn.Module):
    """Same interface as a TIPS model; image i (uniform grey i/10) and any text naming "thing i" share embedding E[i]."""

    temperature = 0.05
    temperature_syn = None

    def __init__(self, n: int = 8, dim: int = 16) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(n, dim), requires_grad=False)
        self.preprocess = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)

    def encode_image(self, x):
        e = self.table[(x.mean(dim=(1, 2, 3)) * 10).round().long()]
        return ImageFeatures(e, e, e[:, None, None])

    def encode_text(self, texts):
        return self.table[[int(re.search(r"thing (\d+)", t).group(1)) for t in texts]]


def test_identical_image_and_text_embeddings_give_perfect_recall_and_accuracy(tmp_path):
    rows = []
    for i in range(8):
        (tmp_path / "val" / f"thing_{i}").mkdir(parents=True)
        Image.new("RGB", (14, 14), (i * 255 // 10 + 1,) * 3).save(tmp_path / "val" / f"thing_{i}" / "x.png")
        rows.append(f"val/thing_{i}/x.png,a picture of thing {i}\n")
        rows.append(f"val/thing_{i}/x.png,thing {i} again\n")
    (tmp_path / "pairs.csv").write_text("image,caption\n" + "".join(rows))
    model = MatchingStub().eval()
    folder = read_image_folder(tmp_path / "val")
    for cls in ("alt", "syn", "mean"):
        m = zero_shot.evaluate_zero_shot(model, folder, OPENAI_TEMPLATES[:5], cls, progress=False)
        assert m["top1"] == 100 and m["mean_per_class_top1"] == 100
        r = retrieval.evaluate_retrieval(model, read_caption_pairs(tmp_path / "pairs.csv"), cls, progress=False)
        assert r["num_captions"] == 16 and r["image_to_text"]["R@1"] == 100 and r["text_to_image"]["R@1"] == 100
        k = knn.evaluate_knn(model, folder, folder, cls, k=1, progress=False)
        assert k["top1"] == 100


# ----------------------------------------------------------------------------- zero-shot segmentation
def _tiny(depth=2, **kw):
    torch.manual_seed(0)
    return tips.create_model("tiny", **{"vision.depth": depth, "text.depth": 1, **kw}).eval()


def test_value_readout_equals_a_direct_computation_from_the_weights():
    model = _tiny()
    blk, vit = model.vision.blocks[-1], model.vision
    with torch.no_grad():  # LayerScale ≠ 1 so a missing ls1 / ls2 would show
        blk.ls1.gamma.normal_(1.0, 0.5)
        blk.ls2.gamma.normal_(1.0, 0.5)
    images = torch.rand(2, 3, 56, 42)
    with torch.no_grad():
        readout = zero_shot_seg.value_readout(model, images)
        x = vit.blocks[0](vit.embed(images))
        D = x.shape[-1]
        ln = lambda t, m: F.layer_norm(t, (D,), m.weight, m.bias, m.eps)  # noqa: E731
        v = ln(x, blk.norm1) @ blk.attn.qkv.weight[2 * D:].T + blk.attn.qkv.bias[2 * D:]
        x = x + blk.ls1.gamma * (v @ blk.attn.proj.weight.T + blk.attn.proj.bias)
        hidden = F.gelu(ln(x, blk.norm2) @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias)
        x = x + blk.ls2.gamma * (hidden @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias)
        expected = ln(x, vit.norm)[:, 2:].reshape(2, 4, 3, D)
        normal = model.encode_image(images).patch_tokens
    torch.testing.assert_close(readout, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(readout, normal, atol=1e-3)  # attention mixing is really gone


def test_value_readout_equals_the_forward_pass_when_all_tokens_are_equal():
    # Hand-made state: zero patch projection and positions, both CLS = the patch bias, so every token
    # entering the (only) block is the same vector and attention can only return its value.
    model = _tiny(depth=1)
    vit = model.vision
    with torch.no_grad():
        vit.patch_embed.proj.weight.zero_()
        vit.pos_embed.zero_()
        vit.cls_token.copy_(vit.patch_embed.proj.bias.view(1, 1, -1))
        vit.reg_token.copy_(vit.patch_embed.proj.bias.view(1, 1, -1))
        images = torch.rand(1, 3, 28, 28)
        torch.testing.assert_close(zero_shot_seg.value_readout(model, images), model.encode_image(images).patch_tokens)


def test_whole_scores_are_the_cosine_with_template_mean_class_embeddings():
    from tips.inference.open_vocab import encode_classes, whole_scores

    model = _tiny()
    image = torch.rand(3, 42, 56)
    names = ["sky", "red sphere", "ground"]
    text = encode_classes(model, names)
    with torch.no_grad():
        prompts = tips.l2_normalize(model.encode_text([render(t, n) for n in names for t in TCL_TEMPLATES]))
        classes = tips.l2_normalize(prompts.reshape(3, 9, -1).mean(1))
        feats = tips.l2_normalize(zero_shot_seg.value_readout(model, image[None]))[0]
        scores = whole_scores(model, image, text)
    torch.testing.assert_close(classes, class_embeddings(model, names, TCL_TEMPLATES, progress=False))
    torch.testing.assert_close(text.embeddings, classes)
    torch.testing.assert_close(scores, torch.einsum("hwd,cd->chw", feats, classes), atol=1e-5, rtol=1e-5)


def test_sliding_windows_cover_the_image_and_average_softmaxes():
    from tips.inference.open_vocab import ClassText, patch_cosines, slide_scores

    model = _tiny()
    image = torch.rand(3, 28, 42)
    text = ClassText([(f"c{i}",) for i in range(4)], tips.l2_normalize(torch.randn(4, 192)), torch.arange(4))
    probs, cosines = slide_scores(model, image, text, window=28, stride=14, mean_cosines=True)
    with torch.no_grad():
        left, right = (F.interpolate(patch_cosines(model, image[None, :, :, a:a + 28], text), size=(28, 28),
                                     mode="bilinear", align_corners=False)[0] for a in (0, 14))
    torch.testing.assert_close(probs[:, :, :14], left.softmax(0)[:, :, :14])
    torch.testing.assert_close(probs[:, :, 14:28], (left.softmax(0)[:, :, 14:] + right.softmax(0)[:, :, :14]) / 2)
    torch.testing.assert_close(cosines[:, :, 14:28], (left[:, :, 14:] + right[:, :, :14]) / 2)
    torch.testing.assert_close(probs.sum(0), torch.ones(28, 42))


def test_miou_ignores_pixels_and_skips_classes_absent_from_prediction_and_truth():
    target = torch.tensor([[0, 0, 1, 1], [0, 255, 1, 3]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 3, 3]])
    conf = zero_shot_seg.confusion_matrix(pred, target, 4)
    m = zero_shot_seg.iou_metrics(conf, ["sky", "ground", "sphere", "cube"], {"objects": [2, 3]})
    # sky 2/3, ground 2/4, sphere absent from both (pixel with label 255 ignored), cube 1/2.
    assert m["per_class_iou"] == pytest.approx({"sky": 200 / 3, "ground": 50.0, "sphere": None, "cube": 50.0})
    assert m["mIoU"] == pytest.approx((200 / 3 + 50 + 50) / 3)
    assert m["mIoU_objects"] == pytest.approx(50.0) and m["pixel_accuracy"] == pytest.approx(500 / 7)


def test_a_none_prediction_is_a_miss_of_its_true_class_only():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 255, 1, 1])  # one sky pixel left as "none of these"
    m = zero_shot_seg.iou_metrics(zero_shot_seg.confusion_matrix(pred, target, 2), ["sky", "ground"])
    assert m["per_class_iou"] == pytest.approx({"sky": 50.0, "ground": 100.0})


def test_zero_shot_seg_command_on_a_probe_folder(official_checkpoint, tmp_path):
    root = tmp_path / "probe"
    (root / "val").mkdir(parents=True)
    classes = [{"id": 0, "name": "sky", "is_object": False}, {"id": 1, "name": "sphere", "is_object": True}]
    (root / "classes.json").write_text(json.dumps({"classes": classes, "ignore_index": 255}))
    for i in range(2):
        _photo("astronaut", 64).save(root / "val" / f"val-{i}.png")
        seg = np.zeros((64, 64), np.uint8)
        seg[20:40, 20:40] = 1
        seg[0, :] = 255
        Image.fromarray(seg).save(root / "val" / f"val-{i}.seg.png")
    args = ["--data", str(root), *_model_args(official_checkpoint, tmp_path)]
    assert zero_shot_seg.main(args) == 0
    result = json.loads((tmp_path / "zero-shot-seg.json").read_text())
    (run,) = result["runs"]
    assert result["protocol"]["templates"] == "tcl" and run["object_classes"] == ["sphere"]
    assert run["settings"]["size"] == 112 and run["settings"]["stride"] == 84
    assert 0 <= run["metrics"]["mIoU"] <= 100 and "mIoU_objects" in run["metrics"]


# ----------------------------------------------------------------------------- readers and templates
def test_templates_come_from_open_clip_and_tcl():
    assert len(OPENAI_TEMPLATES) == 80 and all("{}" in t for t in OPENAI_TEMPLATES)
    assert OPENAI_TEMPLATES[0] == "a bad photo of a {}."
    assert len(TCL_TEMPLATES) == 9 and get_templates("simple") == ("a photo of a {}.",)
    assert render("a photo of {}s.", "cat{}") == "a photo of cat{}s."


def test_class_names_from_folder_names_or_a_mapping(tmp_path):
    for folder in ("n01", "n02_b"):
        (tmp_path / "val" / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / folder / "a.jpg")
    assert read_image_folder(tmp_path / "val").class_names == ["n01", "n02 b"]
    (tmp_path / "classes.json").write_text(json.dumps({"n01": "goldfish", "n02_b": "great white shark"}))
    assert read_image_folder(tmp_path / "val").class_names == ["goldfish", "great white shark"]
    (tmp_path / "names.txt").write_text("tench\nshark\n")
    assert read_image_folder(tmp_path / "val", tmp_path / "names.txt").class_names == ["tench", "shark"]
    (tmp_path / "bad.txt").write_text("only one\n")
    with pytest.raises(ValueError, match="1 class names for 2 class folders"):
        read_image_folder(tmp_path / "val", tmp_path / "bad.txt")


def test_probe_captions_format_selects_the_caption_field(tmp_path):
    lines = []
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"val-{i}.png")
        lines.append(json.dumps({"key": f"val-{i}", "alt_text": f"alt {i}",
                                 "synthetic_captions": [f"syn {i}", f"longer syn {i}"]}) + "\n")
    (tmp_path / "captions.jsonl").write_text("".join(lines))
    alt = read_caption_pairs(tmp_path, "alt_text")
    assert alt.captions == ["alt 0", "alt 1", "alt 2"] and alt.caption_image == [0, 1, 2]
    syn = read_caption_pairs(tmp_path / "captions.jsonl", "synthetic_captions")
    assert len(syn.images) == 3 and syn.caption_image == [0, 0, 1, 1, 2, 2]
    assert retrieval.default_caption_field(tmp_path, "syn") == "synthetic_captions"
    assert retrieval.default_caption_field(tmp_path, "alt") == "alt_text"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "missing.png", "caption": "x"}) + "\n")
        read_caption_pairs(tmp_path / "bad.jsonl")
