"""The training input pipeline on real shards written on the fly from scikit-image photos.

Corrupt samples (bad JPEG, empty alt-text, no synthetic caption, non-UTF-8 caption, truncated tar) are skipped and
counted; exact passes deliver every good sample once; resampled sources mix by weight; ranks see disjoint shards;
the stream is a function of the seed and resumes exactly.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from tips.data import Batch, DataConfig, MaskConfig, SkipCounter, ViewConfig, build_train_loader
from tips.models.tokenizers import build_tokenizer

skdata = pytest.importorskip("skimage.data")

PHOTOS = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket(), skdata.camera()]
TINY = ViewConfig(global_size=32, local_size=16, num_local=2)  # patch 8 → 4 × 4 grid, 12 of 16 masked


def _image_bytes(rng: np.random.Generator, fmt: str = "JPEG") -> bytes:
    """A random crop of a bundled photo, resized to 24–48 px."""
    photo = PHOTOS[int(rng.integers(len(PHOTOS)))]
    h, w = photo.shape[:2]
    top, left = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    image = Image.fromarray(photo[top : top + h // 2, left : left + w // 2])
    image = image.resize((int(rng.integers(24, 48)), int(rng.integers(24, 48))), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def _sample(key: str, rng: np.random.Generator, fmt: str = "jpg") -> dict:
    pil_format = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
    captions = [f"a synthetic caption {i} of {key}" for i in range(1 + int(rng.integers(3)))]
    return {"__key__": key, fmt: _image_bytes(rng, pil_format), "txt": f"alt text of {key}",
            "json": {"synthetic_captions": captions, "source": "test"}}


def _write_shards(folder: Path, prefix: str, num_shards: int, per_shard: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    keys = []
    for s in range(num_shards):
        with wds.TarWriter(str(folder / f"{prefix}-{s:06d}.tar")) as sink:
            for i in range(per_shard):
                key = f"{prefix}{s}_{i}"
                sink.write(_sample(key, rng, fmt=("png", "webp", "jpg", "jpg")[i % 4]))
                keys.append(key)
    return keys


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("bpe")


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """6 shards × 5 samples with one of each kind of damage; returns (pattern, good keys)."""
    folder = tmp_path_factory.mktemp("dirty")
    rng = np.random.default_rng(0)
    good = []
    for s in range(6):
        with wds.TarWriter(str(folder / f"shard-{s:06d}.tar")) as sink:
            for i in range(5):
                key = f"d{s}_{i}"
                sample = _sample(key, rng)
                if (s, i) == (1, 2):
                    sample["jpg"] = sample["jpg"][: len(sample["jpg"]) // 2] + b"\x00garbage"
                elif (s, i) == (2, 0):
                    sample["txt"] = ""
                elif (s, i) == (3, 4):
                    sample["json"] = {"synthetic_captions": [], "source": "test"}
                elif (s, i) == (4, 1):
                    sample["txt"] = b"caf\xe9 \xff\xfe not utf-8"
                elif s != 5 or i < 3:
                    good.append(key)
                sink.write(sample)
    # truncate shard 5 inside the first member of its sample 3: samples 0..2 survive
    path = folder / "shard-000005.tar"
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith("d5_3."))
    path.write_bytes(path.read_bytes()[: member.offset_data + 10])
    return str(folder / "shard-{000000..000005}.tar"), good


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Source 'a' (4 shards × 20) and source 'b' (2 shards × 20), all samples good."""
    folder = tmp_path_factory.mktemp("clean")
    a = _write_shards(folder, "a", 4, 20, seed=1)
    b = _write_shards(folder, "b", 2, 20, seed=2)
    return str(folder / "a-{000000..000003}.tar"), str(folder / "b-{000000..000001}.tar"), a, b


def _config(sources, **kw) -> DataConfig:
    base = dict(sources=sources, resampled=False, batch_size=4, num_workers=0, views=TINY, patch_size=8,
                shuffle_buffer=8, shuffle_initial=4, persistent_workers=True)
    base.update(kw)
    return DataConfig(**base)


def _take(iterator, n: int) -> list[Batch]:
    return list(itertools.islice(iterator, n))


# ---------------------------------------------------------------- batches


def test_batch_has_the_documented_shapes_types_and_exact_mask_count(dirty, tokenizer):
    loader = build_train_loader(_config(dirty[0]), tokenizer)
    batch = next(iter(loader))
    B = 4
    # Crops stay uint8 until Batch.for_model, which makes them float32 in [0, 1] on the device.
    assert batch.global_crop.shape == (B, 3, 32, 32) and batch.global_crop.dtype == torch.uint8
    assert batch.local_crops.shape == (B, 2, 3, 16, 16) and batch.local_crops.dtype == torch.uint8
    model_input = batch.for_model("cpu")
    for name in ("global_crop", "local_crops"):
        crops, floats = getattr(batch, name), getattr(model_input, name)
        assert floats.dtype == torch.float32 and floats.is_contiguous() and floats.shape == crops.shape
        assert torch.equal(floats, crops.float() / 255) and 0.0 <= floats.min() and floats.max() <= 1.0
    assert torch.equal(model_input.patch_mask, batch.patch_mask) and model_input.keys == batch.keys
    assert batch.patch_mask.shape == (B, 16) and batch.patch_mask.dtype == torch.bool
    assert (batch.patch_mask.sum(1) == round(0.75 * 16)).all()
    # Captions are trimmed in the collate to one common length, a multiple of 8 that keeps every real token.
    for ids, padding in [(batch.alt_ids, batch.alt_padding), (batch.syn_ids, batch.syn_padding)]:
        L = ids.shape[1]  # each kind trimmed to its own bucketed length
        assert L % 8 == 0 and L <= 64
        assert ids.shape == (B, L) and ids.dtype == torch.int64
        assert padding.shape == (B, L) and padding.dtype == torch.bool and (~padding).any(1).all()
        last_real = int((~padding).nonzero()[:, 1].max())
        assert L - 8 <= last_real < L  # no whole bucket of padding is kept
    assert len(batch) == B and all(isinstance(k, str) for k in batch.keys)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved == batch


def test_block_masks_in_the_pipeline_have_the_exact_count(clean, tokenizer):
    cfg = _config(clean[0], views=ViewConfig(global_size=64, local_size=16, num_local=1),
                  mask=MaskConfig(mask_shape="block", mask_ratio=0.75))
    batch = next(iter(build_train_loader(cfg, tokenizer)))
    assert batch.patch_mask.shape == (4, 64) and (batch.patch_mask.sum(1) == 48).all()


def test_crop_boxes_follow_the_random_resized_crop_rule():
    from tips.data.views import sample_crop_boxes

    rng = np.random.default_rng(0)
    boxes = np.array(sample_crop_boxes(300, 400, (0.05, 0.32), (3 / 4, 4 / 3), rng, 5000))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 300).all() and (left + w <= 400).all()
    area = h * w / (300 * 400)
    assert 0.045 < area.min() and area.max() < 0.33 and abs(np.median(area) - 0.185) < 0.01
    aspect = w / h
    assert 0.72 < aspect.min() and aspect.max() < 1.39 and abs(np.median(np.log(aspect))) < 0.02
    assert len(set(top.tolist())) > 200 and len(set(left.tolist())) > 300  # positions spread over the image
    # An area range that never fits falls back to the largest centre crop within the aspect range.
    assert sample_crop_boxes(100, 400, (2.0, 3.0), (3 / 4, 4 / 3), rng, 3) == [(0, 133, 100, 133)] * 3


def test_draft_decoding_never_leaves_a_crop_fewer_pixels_across_than_its_output():
    """JPEGs decode at reduced scale only while the smallest box any view can draw keeps its output size."""
    from tips.data.sources import decode_image
    from tips.data.views import draft_size, sample_crop_box

    cfg = ViewConfig()  # 224 global (area ≥ 0.32) + 6 × 98 local (area ≥ 0.05)
    assert draft_size(480, 360, cfg) is None
    rng = np.random.default_rng(0)
    for width, height, reduced in [(2400, 1800, True), (3000, 1000, True), (1100, 1000, True), (1000, 1000, False)]:
        photo = Image.fromarray(PHOTOS[0]).resize((width, height))
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=80)
        image = decode_image(buf.getvalue(), 10**9, lambda w, h: draft_size(w, h, cfg))
        w, h = image.size
        assert (w < width) == reduced, (width, height, image.size)
        for size, scale in [(cfg.global_size, cfg.global_scale), (cfg.local_size, cfg.local_scale)]:
            sides = [min(sample_crop_box(h, w, scale, cfg.ratio, rng)[2:]) for _ in range(1000)]
            assert min(sides) >= size, (width, height, image.size, size, min(sides))


# ---------------------------------------------------------------- exact passes and skips


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_pass_delivers_every_good_sample_once_per_epoch_and_counts_the_bad(dirty, tokenizer, num_workers):
    pattern, good = dirty
    loader = build_train_loader(_config(pattern, num_workers=num_workers), tokenizer)
    orders = []
    for epoch in range(2):
        keys = [k for batch in loader for k in batch.keys]
        assert Counter(keys) == Counter(good), f"epoch {epoch}"
        orders.append(keys)
        totals = loader.skips.as_dict()
        for reason in ("bad_image", "missing_alt_text", "no_synthetic_caption", "bad_text"):
            assert totals[reason] == epoch + 1, (reason, totals)
        assert totals["tar_error"] >= epoch + 1
    assert orders[0] != orders[1]  # a new order every epoch
    assert loader.epoch == 2


def test_skipped_samples_are_logged_rate_limited(caplog):
    counter = SkipCounter(log_every=10)
    with caplog.at_level(logging.WARNING, logger="tips.data"):
        for _ in range(25):
            counter.add("bad_image", "detail")
        counter.add("bad_text")
    messages = [r.getMessage() for r in caplog.records]
    assert sum("skipping sample (bad_image)" in m for m in messages) == 1  # first of a reason only
    assert sum("samples skipped so far" in m for m in messages) == 2  # at 10 and 20
    assert counter.pop_delta() == {"bad_image": 25, "bad_text": 1} and counter.pop_delta() == {}
    assert counter(OSError("truncated")) is True and counter.totals["tar_error"] == 1


def test_pipe_sources_are_opened_by_webdataset_and_give_the_same_samples(clean, tokenizer):
    pattern, _, keys_a, _ = clean
    loader = build_train_loader(_config(f"pipe:cat {pattern}"), tokenizer)
    assert sorted(k for batch in loader for k in batch.keys) == sorted(keys_a)


def test_remote_urls_are_not_checked_up_front_but_missing_local_shards_are(tmp_path):
    from tips.io import expand_shards

    assert len(expand_shards("https://example.invalid/shard-{000000..000003}.tar", check_exists=True)) == 4
    with pytest.raises(FileNotFoundError, match="2 of 2 shards"):
        expand_shards(str(tmp_path / "missing-{0..1}.tar"), check_exists=True)


def test_table_source_goes_through_the_same_views_and_skips(tmp_path, tokenizer):
    rng = np.random.default_rng(3)
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(8):
        (tmp_path / "images" / f"{i}.png").write_bytes(_image_bytes(rng, "PNG"))
        captions = json.dumps([f"syn {i}"])
        rows.append({"image": f"images/{i}.png", "alt_text": f"alt {i}", "synthetic_captions": captions})
    rows[3]["image"] = "images/missing.png"
    rows[5]["synthetic_captions"] = "[]"
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(tmp_path / "pairs.jsonl", "w") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps({"key": f"j{i}", "image": row["image"], "alt_text": row["alt_text"],
                                "synthetic_caption": f"syn {i}"}) + "\n")
    csv_loader = build_train_loader(_config(str(tmp_path / "pairs.csv"), num_workers=2), tokenizer)
    keys = [k for batch in csv_loader for k in batch.keys]
    assert sorted(keys) == sorted(f"pairs/{i:08d}" for i in (0, 1, 2, 4, 6, 7))
    assert csv_loader.skips.as_dict() == {"missing_image": 1, "no_synthetic_caption": 1}
    jsonl_loader = build_train_loader(_config(str(tmp_path / "pairs.jsonl")), tokenizer)
    assert sorted(k for batch in jsonl_loader for k in batch.keys) == sorted(f"j{i}" for i in range(8) if i != 3)


# ---------------------------------------------------------------- resampled mixing, ranks, config checks


def test_resampled_sources_mix_by_weight_within_five_points(clean, tokenizer):
    """3:1 weights over 2000 samples: the fraction of source 'a' is 0.75 ± 0.05 (about 5 standard errors)."""
    views = ViewConfig(global_size=16, local_size=8, num_local=1)
    cfg = _config([clean[0], clean[1]], weights=[3.0, 1.0], resampled=True, epoch_size=2000, batch_size=100,
                  views=views, num_workers=2)
    keys = [k for batch in build_train_loader(cfg, tokenizer) for k in batch.keys]
    assert len(keys) == 2000
    fraction_a = sum(k.startswith("a") for k in keys) / len(keys)
    assert abs(fraction_a - 0.75) < 0.05, fraction_a


def test_two_ranks_with_two_workers_see_disjoint_shards_and_equal_batch_counts(clean, tokenizer):
    """4 shards of 20 over 2 ranks x 2 workers; epoch_size 40 per rank = exactly one shard per worker (no
    shuffle buffer, so nothing is read ahead into the next pass): together the ranks read every sample once."""
    pattern, _, keys_a, _ = clean
    shards_of: dict[tuple[int, int], set[str]] = {}
    keys, counts = [], {}
    for rank in (0, 1):
        cfg = _config(pattern, num_workers=2, epoch_size=40, shuffle_buffer=0)
        batches = list(build_train_loader(cfg, tokenizer, rank=rank, world_size=2))
        counts[rank] = len(batches)
        for batch in batches:
            keys += batch.keys
            shards_of.setdefault((rank, batch.worker), set()).update(k.split("_")[0] for k in batch.keys)
    assert counts == {0: 10, 1: 10}
    assert sorted(len(s) for s in shards_of.values()) == [1, 1, 1, 1]
    assert len(set.union(*shards_of.values())) == 4  # no shard is shared by two (rank, worker) pairs
    assert Counter(keys) == Counter(keys_a)


def test_too_few_shards_for_workers_times_ranks_fails_with_advice(clean, tokenizer):
    cfg = _config(clean[1], num_workers=2, epoch_size=8)  # 2 shards < 2 workers × 2 ranks
    with pytest.raises(ValueError, match="tips-shards --max-count"):
        build_train_loader(cfg, tokenizer, rank=0, world_size=2)


def test_config_errors_say_what_to_set(clean, tokenizer):
    with pytest.raises(ValueError, match="epoch_size"):
        build_train_loader(_config(clean[0], resampled=True), tokenizer)
    with pytest.raises(ValueError, match="epoch_size"):
        build_train_loader(_config(clean[0]), tokenizer, rank=0, world_size=2)
    with pytest.raises(ValueError, match="resampled=True"):
        build_train_loader(_config([clean[0], clean[1]], weights=[2, 1]), tokenizer)


# ---------------------------------------------------------------- determinism and resume


def test_same_seed_gives_the_same_stream_and_another_seed_does_not(clean, tokenizer):
    cfg = _config([clean[0], clean[1]], resampled=True, epoch_size=16, num_workers=2)
    first = _take(build_train_loader(cfg, tokenizer).forever(), 6)
    again = _take(build_train_loader(cfg, tokenizer).forever(), 6)
    assert first == again
    cfg.seed = 1
    other = _take(build_train_loader(cfg, tokenizer).forever(), 6)
    assert [b.keys for b in other] != [b.keys for b in first]


@pytest.mark.parametrize("num_workers, start", [(2, 3), (2, 6), (0, 7)])
def test_resume_from_batch_k_gives_the_uninterrupted_stream(clean, tokenizer, num_workers, start):
    """5 batches per virtual epoch; resuming at batch 3 (worker 1 first), 6 (next epoch) or 7."""
    cfg = _config([clean[0], clean[1]], resampled=True, epoch_size=20, num_workers=num_workers)
    reference = _take(build_train_loader(cfg, tokenizer).forever(), 10)
    resumed = build_train_loader(cfg, tokenizer, start_batch=start)
    assert resumed.epoch == start // 5
    assert _take(resumed.forever(), 10 - start) == reference[start:]
    assert resumed.batches_seen == 10


def test_resume_in_exact_pass_mode_counts_earlier_epochs_and_continues_exactly(dirty, tokenizer):
    cfg = _config(dirty[0], num_workers=2)
    loader = build_train_loader(cfg, tokenizer)
    epoch0, epoch1 = list(loader), list(loader)
    reference = epoch0 + epoch1
    for start in (3, len(epoch0) + 2):
        resumed = build_train_loader(cfg, tokenizer, start_batch=start)
        rest = list(resumed) if start > len(epoch0) else list(resumed) + list(resumed)
        assert rest == reference[start:], start


def test_trim_padding_keeps_a_common_bucketed_length_and_every_real_token():
    from tips.data.batch import trim_padding

    ids = torch.arange(2 * 64).view(2, 64)
    pad_a = torch.arange(64)[None].expand(2, -1) >= torch.tensor([[3], [11]])  # 3 and 11 real tokens
    pad_b = torch.arange(64)[None].expand(2, -1) >= torch.tensor([[5], [1]])
    (a, pa), (b, pb) = trim_padding([(ids, pad_a), (ids, pad_b)], multiple=8)
    assert a.shape == b.shape == pa.shape == pb.shape == (2, 16)  # 11 real tokens → the 16 bucket
    assert torch.equal(a, ids[:, :16]) and torch.equal(pa, pad_a[:, :16])
    full = torch.zeros(2, 64, dtype=torch.bool)
    assert trim_padding([(ids, full)], multiple=8)[0][0].shape == (2, 64)  # nothing to drop
    empty = torch.ones(2, 64, dtype=torch.bool)
    assert trim_padding([(ids, empty)], multiple=8)[0][0].shape == (2, 8)  # all padding: one bucket kept
