"""Dense-prediction throughput: our DPT path (``DenseHead.predict`` on ``tips.load``'s tower) vs a plain one.

Peers, the same weights, the same input, measured in the same run with the repeats interleaved:
- ``ours``: timm's tower (SDPA attention) → ``DenseHead`` (channels-last maps, the CLS half of the readout
  computed once per image);
- ``plain``: the test reference (tips_reference): the official tower with explicit softmax(QKᵀ)V attention and the
  official decoder written plainly (NCHW, concatenated readout).

Prints images/s (median over repeats) of both, the ratio ours/plain, and the max |Δ| of the outputs.

    python bench/predict.py                                     # S/14-sized tower, 224 px, batch 2, CPU fp32
    python bench/predict.py --width 768 --size 448 --batch 8 --device cuda --iters 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


import tips
from tips_reference import official_dpt as R
from tips_reference.official_torch import OfficialVisionEncoder, randomize_, save_official_npz


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=["segmentation", "depth", "normals"], default="depth")
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=3, help="timed repeats per path (after one warm-up each)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    heads = max(1, args.width // 64)
    out = {"segmentation": 150, "depth": 256, "normals": 3}[args.task]
    dev = torch.device(args.device)

    encoder = randomize_(OfficialVisionEncoder(args.width, args.depth, heads, 4 * args.width, "mlp", 14, 32), 0)
    decoder = R.randomize_decoder_(R.OfficialDecoder(args.task, args.width, out), 1)
    with tempfile.TemporaryDirectory() as tmp:
        model = tips.load(save_official_npz(encoder, Path(tmp) / "b_vision.npz"), heads=heads).to(dev)
        head = tips.load_head(R.save_scenic_zip(decoder, Path(tmp) / "b.zip")).to(dev)
    encoder, decoder = encoder.to(dev), decoder.to(dev)
    x = torch.rand(args.batch, 3, args.size, args.size, device=dev)

    def ours() -> torch.Tensor:
        return head.predict(model, x)

    @torch.inference_mode()
    def plain() -> torch.Tensor:
        return R.reference_predict(decoder, encoder, x)

    paths = {"ours": ours, "plain": plain}
    diff = (ours() - plain()).abs().max().item()  # also the warm-up
    times: dict[str, list[float]] = {k: [] for k in paths}
    for i in range(args.iters):
        for name in list(paths)[i % 2 :] + list(paths)[: i % 2]:  # alternate which path runs first
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            paths[name]()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
    print(f"{args.task} head, width {args.width}, depth {args.depth}, {args.size} px, batch {args.batch}, "
          f"{args.device}, {args.iters} repeats")
    print("| path | images/s |\n|---|---|")
    for k, v in rate.items():
        print(f"| {k} | {v:.2f} |")
    print(f"ratio ours/plain: {rate['ours'] / rate['plain']:.2f}   max |ours - plain| = {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
