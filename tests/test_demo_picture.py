"""The demo's first picture (issue 41 item 14): text queries with each model's top images, the caption's own image
framed, and depth with every image's object RMSE; the retrieval examples it is drawn from; the probe samples it
reads; the depth probe's per-image object RMSE."""

import numpy as np
import pytest
import torch
from PIL import Image

from tips_eval.demo_picture import HIT, benefit_page
from tips_eval.probes.common import VisSample
from tips_eval.report import load_samples, save_samples
from tips_eval.retrieval import retrieval_examples, retrieval_ranks


def test_examples_are_evenly_spaced_and_agree_with_the_ranks():
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(24, 8, generator=g), dim=1)
    caption_image = torch.arange(24) // 2
    examples = retrieval_examples(images, texts, caption_image, count=3, k=4)
    assert [e["caption"] for e in examples] == [0, 12, 23]  # spread over the captions, not picked by outcome
    _, t2i = retrieval_ranks(images, texts, caption_image)
    for e in examples:
        sims = texts[e["caption"]] @ images.T
        assert e["target"] == int(caption_image[e["caption"]]) and e["rank"] == int(t2i[e["caption"]])
        assert e["top"] == sims.argsort(descending=True)[:4].tolist()
    assert retrieval_examples(images, texts, caption_image, count=0) == []


def test_samples_round_trip_without_pickle(tmp_path):
    vis = [VisSample(f"val-{i}", np.full((6, 5, 3), i, np.uint8), np.full((6, 5), 1.5 + i, np.float32),
                     np.full((6, 5), 2.0, np.float32), np.zeros((2, 2, 4), np.float32)) for i in range(2)]
    loaded = load_samples(save_samples(vis, tmp_path / "s.npz"))
    assert [s["key"] for s in loaded] == ["val-0", "val-1"]
    for v, s in zip(vis, loaded):
        assert np.array_equal(s["image"], v.image) and np.array_equal(s["target"], v.target)
        assert np.array_equal(s["pred"], v.pred)


def _example(paths, target, top):
    return {"caption": 0, "caption_text": "a red sphere", "target": target, "rank": top.index(target) if target in top
            else 9, "top": top, "target_path": str(paths[target]), "top_paths": [str(paths[i]) for i in top]}


def test_the_page_frames_the_own_image_and_shows_both_sections(tmp_path):
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"im{i}.png")
        Image.new("RGB", (32, 32), (40 * i, 60, 200)).save(paths[-1])
    examples = {"trained": [_example(paths, 2, [2, 0, 1, 3, 4])], "random": [_example(paths, 2, [0, 1, 3, 4, 5])]}
    gt = np.linspace(1, 10, 32 * 32, dtype=np.float32).reshape(32, 32)
    sample = {"key": "val-0", "image": np.zeros((32, 32, 3), np.uint8), "target": gt}
    depth = {"trained": [{**sample, "pred": gt + 0.5}], "random": [{**sample, "pred": gt + 3.0}]}
    object_rmse = {"trained": {"val-0": 0.5, "val-1": 2.0}, "random": {"val-0": 3.0, "val-1": 1.0}}
    rows = {"text_to_image_r1": {"trained": 18.0, "random": 0.8}, "object_depth_rmse": {"trained": 0.5, "random": 3.0}}
    page = np.asarray(Image.open(benefit_page(examples, depth, object_rmse, rows, tmp_path / "page.png", 150)).convert("RGB"))
    hit = np.array([int(HIT[i:i + 2], 16) for i in (1, 3, 5)])
    framed = (np.abs(page.astype(int) - hit).sum(-1) < 30)
    assert framed.sum() > 100  # the trained model's top 1 is the caption's own image: it is framed
    half = page.shape[1] // 2
    assert framed[:, :half].sum() > 0 and framed[:, half:].sum() == 0  # the random top 5 misses it: no frame there
    assert page.shape[1] == pytest.approx(13 * 80, abs=2)
