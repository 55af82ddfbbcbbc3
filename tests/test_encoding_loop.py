"""One image-encoding loop (``tips.inference.encoding.encode_images``) serves extraction, the global probes and the
dense probes' feature cache, and its progress bar counts images decoded and encoded, never done before the work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import tqdm.auto
from PIL import Image

import tips
from tips.inference import encoding
from tips.inference.extract import BatchEncoder, ExtractOptions, extract


class RecordingBar(tqdm.auto.tqdm):
    """A tqdm whose updates and postfixes are logged in ``events`` (shared by every bar of a test)."""

    events: list[tuple[str, int]] = []

    def update(self, n=1):
        RecordingBar.events.append(("encoded", int(n)))
        return super().update(n)

    def set_postfix_str(self, s="", refresh=True):
        RecordingBar.events.append(("decoded", int(s.split()[-1])))
        return super().set_postfix_str(s, refresh)


@pytest.fixture
def photos(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (h, w) in enumerate([(40, 60), (56, 56), (70, 30)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


@pytest.fixture
def model():
    torch.manual_seed(0)
    return tips.create_model("tiny").eval()


def test_extract_bar_counts_decoded_and_encoded_and_reaches_the_total_only_after_the_write(photos, model, tmp_path,
                                                                                          monkeypatch):
    RecordingBar.events = []
    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    writes = BatchEncoder.write

    def logged_write(self, out, items):
        RecordingBar.events.append(("written", len(items)))
        return writes(self, out, items)

    monkeypatch.setattr(BatchEncoder, "write", logged_write)
    # four images, one of them broken, fewer than a batch: the old bar showed 4/4 before any encoding
    extract(photos, tmp_path / "out", model, ExtractOptions(resolution=56, batch_size=8, progress=True))
    events = RecordingBar.events
    encoded = [n for kind, n in events if kind == "encoded"]
    assert sum(encoded) == 4  # three encoded + one skipped
    written_at = events.index(("written", 3))
    done_before_write = sum(n for kind, n in events[:written_at] if kind == "encoded")
    assert done_before_write == 1  # only the broken image counted before the batch's features were written
    assert ("encoded", 3) in events[written_at:]
    decoded = [n for kind, n in events if kind == "decoded"]
    assert decoded[-1] == 4 and decoded == sorted(decoded)


def test_encode_images_counts_a_batch_encoded_only_after_its_output_is_consumed(model):
    bar = encoding.ImageProgress(5, enabled=True, bar=RecordingBar, leave=False)
    RecordingBar.events = []
    batches = [(torch.rand(3, 3, 56, 56), "a"), (torch.rand(2, 3, 56, 56), "b")]
    seen = []
    for out, extra in encoding.encode_images(model, batches, bar):
        seen.append((extra, bar.bar.n, bar.decoded_count, out.cls_alt.shape[0]))
    bar.close()
    assert seen == [("a", 0, 3, 3), ("b", 3, 5, 2)]
    assert bar.bar.n == 5


def test_extraction_the_probes_and_the_probe_cache_all_go_through_the_one_loop(photos, model, tmp_path, monkeypatch):
    from tips_eval import common
    from tips_eval.datasets import open_dataset
    from tips_eval.features import FeatureSpec, cached_features, checkpoint_identity
    from tips_pipelines.scenes import main as scenes_main

    calls: list[str] = []
    original = encoding.encode_images

    def spy(model, batches, progress=None, encode=encoding.encode_image_features, dtype="float32"):
        calls.append(getattr(encode, "__name__", type(encode).__name__))
        yield from original(model, batches, progress, encode, dtype)

    monkeypatch.setattr(encoding, "encode_images", spy)
    result = extract(photos, tmp_path / "out", model, ExtractOptions(resolution=56, progress=False))
    assert len(calls) == 1 and result.count == 3

    images = torch.rand(5, 3, 56, 56)
    feats, labels = common.encode_images(model, torch.utils.data.TensorDataset(images, torch.arange(5)), 2,
                                         progress=False)
    assert len(calls) == 2 and labels.tolist() == [0, 1, 2, 3, 4]
    with torch.no_grad():
        want = model.encode_image(images)
    torch.testing.assert_close(feats["alt"], want.cls_alt, atol=1e-5, rtol=1e-4)  # unchanged by the loop

    assert scenes_main(["--out", str(tmp_path / "scenes"), "--num-train", "2", "--num-val", "2", "--num-pretrain",
                        "0", "--resolution", "56", "--seed", "0", "--num-workers", "1"]) == 0
    ds = open_dataset(f"scenes:{tmp_path / 'scenes' / 'probe'}", "val")
    spec = FeatureSpec((56, 56), (3,), norm=True, cls=False)
    cache = cached_features(model, checkpoint_identity(None, "tiny"), ds, spec, tmp_path / "cache", progress=False)
    assert len(calls) == 3 and cache.patch.shape[0] == 2
