"""Training the segmentation probe from the feature cache against recomputing the features every epoch.

    python bench/probe.py                               # tiny model, 64 train images of 112 px, 5 epochs
    python bench/probe.py --variant s14 --size 224 --epochs 10

Both runs train the same head (BatchNorm + 1×1 conv, fast protocol) for the same iterations on the same batches
of a tiny tips-scenes probe split generated into a temporary folder. The cached run pays for one extraction
(written to a memory-mapped cache) and then reads features; the other decodes images and runs the frozen
backbone for every batch. Printed: both times and their ratio.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import tips
from tips_pipelines.scenes import main as scenes_main
from tips_eval.datasets import open_dataset
from tips_eval.features import FeatureSpec, cached_features, checkpoint_identity, compute_features, image_to_tensor, probe_input
from tips_eval.probes.common import batch_order, make_optimizer, optimizer_step
from tips_eval.probes.config import load_probe_config
from tips_eval.probes.segmentation import LinearSegHead, train_fast, upsampled_loss


def train_recomputing(model: tips.TIPS, dataset, spec: FeatureSpec, cfg) -> LinearSegHead:
    """The same probe, features recomputed from decoded images for every batch."""
    torch.manual_seed(cfg.seed)
    head = LinearSegHead(model.width * len(spec.layers), dataset.info.num_classes)
    optimizer = make_optimizer(head, cfg.optim)
    head.train()
    for step, idx in enumerate(batch_order(len(dataset), cfg.optim.batch_size, cfg.optim.iterations, cfg.seed)):
        samples = [dataset[int(i)] for i in np.sort(idx)]
        images = torch.stack([image_to_tensor(s.image, spec.resolution) for s in samples])
        seg = torch.stack([s.seg for s in samples])
        patch, cls = compute_features(model, images, spec)
        optimizer_step(optimizer, upsampled_loss(head(probe_input(patch, cls)), seg), step, cfg.optim)
    return head


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="tiny")
    p.add_argument("--num-train", type=int, default=64)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tips-bench-probe-") as tmp:
        tmp = Path(tmp)
        scenes_main(["--out", str(tmp / "scenes"), "--num-train", str(args.num_train), "--num-val", "1",
                     "--num-pretrain", "0", "--resolution", str(args.size), "--seed", "0", "--num-workers", "1"])
        dataset = open_dataset(f"scenes:{tmp / 'scenes'}", "train")
        torch.manual_seed(0)
        model = tips.create_model(args.variant).eval()
        spec = FeatureSpec((args.size, args.size), (model.cfg.vision.depth - 1,), norm=True, cls=False)
        iterations = args.epochs * math.ceil(len(dataset) / args.batch_size)
        cfg = load_probe_config(None, [f"optim.iterations={iterations}", f"optim.batch_size={args.batch_size}",
                                       "optim.warmup=1"], task="segmentation", progress=False)

        t0 = time.perf_counter()
        cache = cached_features(model, checkpoint_identity(None, args.variant, 0), dataset, spec, tmp / "cache",
                                batch_size=args.batch_size, progress=False)
        t1 = time.perf_counter()
        train_fast(cache, dataset.info.num_classes, cfg, torch.device("cpu"))
        t2 = time.perf_counter()
        train_recomputing(model, dataset, spec, cfg)
        t3 = time.perf_counter()

    extract, cached_train, recompute = t1 - t0, t2 - t1, t3 - t2
    print(f"tips {args.variant}, {len(dataset)} images of {args.size} px, {args.epochs} epochs = {iterations} "
          f"iterations of batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"  from the cache:        {extract:6.1f} s extraction (once) + {cached_train:6.1f} s training = "
          f"{extract + cached_train:6.1f} s")
    print(f"  recomputing features:  {recompute:6.1f} s")
    print(f"  ratio recompute / cache: {recompute / (extract + cached_train):.1f}x including the extraction, "
          f"{recompute / cached_train:.1f}x training alone")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
