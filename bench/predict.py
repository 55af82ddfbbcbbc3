"""Dense-prediction throughput: our DPT path against transformers' ``Tipsv2DptFor<Task>`` and a plain one.

Peers, the same weights, the same input, measured in the same run with the repeats interleaved (order rotating):
- ``ours``: what ``tips-predict`` runs: ``DenseHead.predict`` on ``tips.load``'s tower after
  ``tips.prepare_for_inference`` (on a CPU in fp32, the tower's linear layers oneDNN-packed); output at the input's
  size;
- ``ours-eager``: the same tower without that preparation;
- ``ours-int8``: ``tips-predict --quantize int8`` (``tips.quantize``: oneDNN or fbgemm int8 layers on a CPU);
- ``transformers``: ``Tipsv2DptFor<Task>`` loaded from ``tips-export --format transformers`` of the same tower and
  head (its backbone on SDPA, transformers' default there); its forward only, whose output is at the decoder's
  resolution (not resized to the input: one interpolation less than ours);
- ``plain``: the test reference (tips_reference): the official tower with explicit softmax(QKᵀ)V attention and the
  official decoder written plainly (NCHW, concatenated readout).

Prints images/s (median over repeats) of each, its ratio to transformers and to plain, and the max |Δ| of each
fp32 output to plain's (int8: its relative error).

    python -m bench.predict                                     # S/14-sized tower, 224 px, batch 2, CPU fp32
    python -m bench.predict --width 768 --size 448 --batch 2    # B/14 at TIPSv2's native size
    python -m bench.predict --width 768 --size 448 --batch 8 --device cuda --iters 10 --paths ours,transformers,plain
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

import tips
from tips_reference import official_dpt as R
from tips_reference.official_torch import OfficialVisionEncoder, randomize_, save_official_npz

from bench.extract import time_interleaved

PATHS = ("ours", "ours-eager", "ours-int8", "transformers", "plain")
HF_CLASSES = {"depth": "Tipsv2DptForDepthEstimation", "normals": "Tipsv2DptForNormalEstimation",
              "segmentation": "Tipsv2DptForSemanticSegmentation"}


def transformers_dpt(head, model, task: str, workdir: Path) -> torch.nn.Module:
    """transformers' ``Tipsv2DptFor<Task>`` holding ``model``'s tower and ``head``, read from our export of them."""
    import transformers

    from tips.formats.hf_dpt import export_transformers_dpt

    export_transformers_dpt(head, workdir / "hf_dpt", model=model)
    return getattr(transformers, HF_CLASSES[task]).from_pretrained(workdir / "hf_dpt")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=["segmentation", "depth", "normals"], default="depth")
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=3, help="timed repeats per path (after one warm-up each)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    args = p.parse_args(argv)
    heads = max(1, args.width // 64)
    out = {"segmentation": 150, "depth": 256, "normals": 3}[args.task]
    dev = torch.device(args.device)

    encoder = randomize_(OfficialVisionEncoder(args.width, args.depth, heads, 4 * args.width, "mlp", 14, 32), 0)
    decoder = R.randomize_decoder_(R.OfficialDecoder(args.task, args.width, out), 1)
    names = args.paths.split(",")
    unknown = [n for n in names if n not in PATHS]
    if unknown:
        p.error(f"unknown --paths {unknown}; choose from {PATHS}")
    x = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(dev)
    fns = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = tips.load(save_official_npz(encoder, Path(tmp) / "b_vision.npz"), heads=heads).eval()
        head = tips.load_head(R.save_scenic_zip(decoder, Path(tmp) / "b.zip")).eval().to(dev)
        if "transformers" in names:
            hf = transformers_dpt(head, model, args.task, Path(tmp)).eval().to(dev)
            fns["transformers"] = lambda: hf(pixel_values=x)
    model = model.to(dev)
    if "ours" in names:
        prepared = tips.prepare_for_inference(copy.deepcopy(model), dev)
        fns["ours"] = lambda: head.predict(prepared, x)
    if "ours-eager" in names:
        fns["ours-eager"] = lambda: head.predict(model, x)
    if "ours-int8" in names:
        quantized = tips.prepare_for_inference(copy.deepcopy(model), dev, quantize="int8")
        fns["ours-int8"] = lambda: head.predict(quantized, x)
    encoder, decoder = encoder.to(dev), decoder.to(dev)
    if "plain" in names:
        fns["plain"] = lambda: R.reference_predict(decoder, encoder, x)
    fns = {n: fns[n] for n in names}

    def inference(fn):
        def call():
            with torch.inference_mode():
                return fn()
        return call

    with torch.inference_mode():
        reference = R.reference_predict(decoder, encoder, x).float()
        error = {}
        for n, fn in fns.items():
            if n.startswith("ours"):
                got = fn().float()
                error[n] = (f"{(got - reference).norm() / reference.norm():.1e} rel" if n == "ours-int8"
                            else f"{(got - reference).abs().max():.1e}")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    seconds = time_interleaved({n: inference(fn) for n, fn in fns.items()}, args.iters, 1, sync)
    rate = {n: args.batch / s for n, s in seconds.items()}
    print(f"{args.task} head, width {args.width}, depth {args.depth}, {args.size} px, batch {args.batch}, "
          f"{args.device}, {args.iters} repeats after 1 warm-up, threads {torch.get_num_threads()}\n")
    print("| path | images/s | × transformers | × plain | max abs Δ to plain |\n|---|---|---|---|---|")
    for n, v in rate.items():
        vs_hf = f"{v / rate['transformers']:.2f}" if "transformers" in rate else "-"
        vs_plain = f"{v / rate['plain']:.2f}" if "plain" in rate else "-"
        print(f"| {n} | {v:.2f} | {vs_hf} | {vs_plain} | {error.get(n, '-')} |")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
