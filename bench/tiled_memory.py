"""Peak memory of a tiled dense prediction: one smooth photo of SIDE × SIDE through ``tips-predict segmentation``'s
path (``write_predictions`` with ``tile`` and ``overlap``) on a random ``tiny`` model and a random 150-class DPT
head, logits stored. Prints one JSON line: the side, the size predicted (rounded to the patch), the process's peak
RSS, the bytes of the output arrays (float16 logits + int16 argmax) and the wall time.

    python -m bench.tiled_memory --side 2048 --out /tmp/tiled     # one process per measurement
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import tips
from tips.inference.predict import PredictOptions, write_predictions
from tips.models.dpt import build_head


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, required=True, help="photo side in pixels")
    p.add_argument("--out", required=True, help="a folder for the photo and the predictions")
    p.add_argument("--classes", type=int, default=150)
    p.add_argument("--fusion", type=int, default=16, help="DPT width (official 256; small keeps a CPU run short)")
    p.add_argument("--tile", type=int, default=224, help="tile side (the tiny model's native size)")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photo = out / "photo.png"
    Image.fromarray(rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)).resize((args.side, args.side),
                                                                             Image.BICUBIC).save(photo)
    torch.manual_seed(0)
    model = tips.create_model("tiny").eval()
    head = build_head("segmentation", model.width, args.classes, fusion=args.fusion).eval()
    options = PredictOptions(task="segmentation", head=head, tile=args.tile, overlap=args.overlap,
                             batch_size=args.batch, num_workers=0, progress=False, device="cpu", sheet=1,
                             max_pixels=None)
    start = time.perf_counter()
    write_predictions(photo, out / "pred", model, options)
    seconds = time.perf_counter() - start
    s = args.side // model.patch_size * model.patch_size  # tips.inference.tiling.RoundToPatch rounds down
    print(json.dumps({"side": args.side, "predicted": [s, s], "peak_rss_bytes": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss * 1024, "output_bytes": args.classes * s * s * 2 + s * s * 2,
        "seconds": round(seconds, 1), "model": "tiny (random)", "head": f"{args.classes} classes, fusion {args.fusion}",
        "tile": args.tile, "overlap": args.overlap}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
