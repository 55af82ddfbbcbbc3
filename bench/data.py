"""Throughput of the TIPS input pipeline against a decode + single-crop baseline on the same shards.

    python bench/data.py                      # 512 photos of ~480 px, 2 workers, batch 32
    python bench/data.py --workers 8 --samples 2048

Full TIPS: shuffle, decode, 1 global 224 crop + 6 local 98 crops, flips, a 75 % random mask, one synthetic
caption drawn and both captions tokenised (BPE), collated into a Batch of uint8 crops (the trainer turns them
into floats on the device, which is not timed here). Baseline: shuffle, full decode, one RandomResizedCrop(224)
to float, stacked. Both read the same shards with the same workers and batch size; after
one warm-up pass each, timed passes alternate between the two so that machine load affects both alike. Shards
are generated from scikit-image's bundled photos into a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as T
import webdataset as wds
from PIL import Image

from tips.data import DataConfig, build_train_loader
from tips import build_tokenizer
from tips.io import decode_image, write_shard
from tips.models import to_rgb


def write_shards(folder: Path, samples: int, size: int, num_shards: int, seed: int = 0) -> str:
    """Random crops of the bundled photos, resized so the longer side is ``size``, as JPEG q90 shards."""
    import skimage.data as skdata

    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket(), skdata.immunohistochemistry(),
              skdata.hubble_deep_field(), skdata.retina()]
    rng = np.random.default_rng(seed)
    per_shard = -(-samples // num_shards)
    for s in range(num_shards):
        write_shard(folder / f"bench-{s:06d}.tar", (_sample(photos, rng, size, s, i)
                                                    for i in range(min(per_shard, samples - s * per_shard))))
    return str(folder / f"bench-{{000000..{num_shards - 1:06d}}}.tar")


def _sample(photos: list[np.ndarray], rng: np.random.Generator, size: int, shard: int, i: int) -> dict:
    """One webdataset sample: a random crop of a photo as JPEG q90, an alt-text and two synthetic captions."""
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    image = Image.fromarray(photo[top : top + ch, left : left + cw])
    scale = size / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    captions = [f"A detailed synthetic description of image {i}, with the objects, their colours and layout.",
                f"Short caption {i}."]
    return {"__key__": f"{shard:06d}_{i:06d}", "jpg": buf.getvalue(), "txt": f"a web photo number {i} from shard {shard}",
            "json": json.dumps({"synthetic_captions": captions, "source": "bench"})}


class _DecodeCrop:
    """Baseline per-sample work: decode, one RandomResizedCrop(224), to float."""

    def __init__(self) -> None:
        self.crop = T.RandomResizedCrop(224, scale=(0.32, 1.0), antialias=True)

    def __call__(self, sample: dict) -> torch.Tensor:
        rgb = np.asarray(to_rgb(decode_image(sample["jpg"], max_pixels=89_478_485), in_place=True))  # full size, (H, W, 3) uint8
        return self.crop(torch.from_numpy(rgb.copy()).permute(2, 0, 1)).float().div_(255.0)


def baseline_loader(pattern: str, batch_size: int, workers: int, buffer: int) -> wds.WebLoader:
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(pattern), wds.split_by_worker, wds.tarfile_to_samples(),
        wds.shuffle(buffer, min(buffer, 500)), wds.map(_DecodeCrop()),
        wds.batched(batch_size, collation_fn=torch.stack, partial=True),
    )
    return wds.WebLoader(pipeline, batch_size=None, num_workers=workers, persistent_workers=workers > 0)


def _timed_pass(loader) -> tuple[int, float]:
    count, start = 0, time.perf_counter()
    for batch in loader:
        count += len(batch)
    return count, time.perf_counter() - start


def interleaved_rates(loaders: list, epochs: int) -> list[float]:
    """Samples/s of each loader: one warm-up pass each (starts workers), then ``epochs`` rounds that time one
    pass of every loader in turn, so a change in machine load hits all of them alike."""
    for loader in loaders:
        _timed_pass(loader)
    counts, seconds = [0] * len(loaders), [0.0] * len(loaders)
    for _ in range(epochs):
        for i, loader in enumerate(loaders):
            n, t = _timed_pass(loader)
            counts[i] += n
            seconds[i] += t
    return [n / t for n, t in zip(counts, seconds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--size", type=int, default=480, help="longer side of the stored JPEGs")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="timed passes of each, interleaved, after a warm-up")
    parser.add_argument("--shuffle-buffer", type=int, default=500)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tips-bench-data-") as tmp:
        pattern = write_shards(Path(tmp), args.samples, args.size, args.shards)
        cfg = DataConfig(sources=[pattern], resampled=False, batch_size=args.batch_size, num_workers=args.workers,
                         shuffle_buffer=args.shuffle_buffer, shuffle_initial=min(500, args.shuffle_buffer))
        tips = build_train_loader(cfg, build_tokenizer("bpe"))
        baseline = baseline_loader(pattern, args.batch_size, args.workers, args.shuffle_buffer)
        tips_rate, base_rate = interleaved_rates([tips, baseline], args.epochs)

    print(f"{args.samples} JPEGs (longer side {args.size} px) in {args.shards} shards, "
          f"{args.workers} workers, batch {args.batch_size}, {args.epochs} timed passes")
    per = max(1, args.workers)
    print(f"{'pipeline':<48} {'samples/s':>10} {'per worker':>11}")
    print(f"{'TIPS: decode, 1x224 + 6x98 crops, mask, 2 captions':<48} {tips_rate:>10.1f} {tips_rate / per:>11.1f}")
    print(f"{'baseline: decode, 1x224 crop':<48} {base_rate:>10.1f} {base_rate / per:>11.1f}")
    print(f"{'ratio TIPS / baseline':<48} {tips_rate / base_rate:>10.2f}")


if __name__ == "__main__":
    main()
