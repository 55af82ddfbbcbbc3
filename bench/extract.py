"""Image-encoder throughput of every inference path, same run, same weights, against the official encoder.

Paths (one model's weights; repeats interleaved, the order rotating each repeat):
- ``fp32``: ``TIPS.encode_image`` after ``tips.prepare_for_inference`` (what ``tips-extract`` runs): on the CPU the
  image tower's linear layers pre-packed for oneDNN with bias, GELU and LayerScale fused; SDPA attention;
- ``fp32-eager``: the same model without that preparation (plain ``nn.Linear``), the path before packing;
- ``bf16``: the same under ``tips.autocast(model, "bfloat16")`` (``tips-extract --dtype bfloat16``);
- ``int8``: ``tips.quantize(model, "int8")`` (``tips-extract --quantize int8``: on CPU oneDNN's int8 kernels where
  the CPU has VNNI, else fbgemm);
- ``int8-fbgemm``: the same with ``backend="fbgemm"`` (7-bit activations), the CPU path before oneDNN;
- ``int8-torchao``: torchao's int8 dynamic layers (opt-in with ``--paths``; very slow on AVX2 CPUs);
- ``onnx`` / ``onnx-int8``: ``tips-export --format onnx [--int8]`` graphs run by onnxruntime (CPU);
- ``transformers``: transformers' ``Tipsv2VisionModel`` (SDPA attention) loaded from ``tips-export --format
  transformers`` of the same weights: the implementation a user gets with ``pip install transformers``;
- ``official``: the official TIPS encoder's unfused softmax(QKᵀ)V attention, re-implemented independently in
  ``tips_reference/official_torch.py``, loaded with the same weights (official layout).

Prints a markdown table of images/s (median over repeats) and the ratios to our fp32, to ``transformers`` and to
``official``, and
the cosine similarity of CLS1 to the eager fp32 model (the lowest over the batch).

    python bench/extract.py --variant b14                               # batch 8 at 224 and 2 at 448, CPU
    python bench/extract.py --paths fp32,bf16,official --device cuda --batch 64,16
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

import tips

from tips_reference.official_torch import OfficialVisionEncoder, load_official_npz

PATHS = ("fp32", "fp32-eager", "bf16", "int8", "int8-fbgemm", "int8-torchao", "onnx", "onnx-int8", "transformers",
         "official")
DEFAULT_PATHS = "fp32,fp32-eager,bf16,int8,int8-fbgemm,onnx,onnx-int8,transformers,official"


def official_encoder(model: tips.TIPS, workdir: Path) -> OfficialVisionEncoder:
    """The reference encoder holding ``model``'s image-tower weights, read back from its official ``.npz`` export."""
    cfg = model.cfg.vision
    ref = OfficialVisionEncoder(cfg.width, cfg.depth, cfg.heads, cfg.mlp_hidden, cfg.ffn, cfg.patch_size, cfg.pos_grid)
    load_official_npz(ref, tips.save(model, workdir / "official", format="official")["vision"])
    return ref.eval()


def transformers_encoder(model: tips.TIPS, workdir: Path) -> torch.nn.Module:
    """transformers' ``Tipsv2VisionModel`` (SDPA) holding ``model``'s image tower, read from its transformers export."""
    from transformers import Tipsv2VisionModel

    vision_only = copy.deepcopy(model)
    vision_only.text = None
    vision_only.cfg = tips.ModelConfig(vision=model.cfg.vision, text=None)
    tips.save(vision_only, workdir / "transformers", format="transformers")
    return Tipsv2VisionModel.from_pretrained(workdir / "transformers", attn_implementation="sdpa").eval()


def time_interleaved(
    fns: dict[str, Callable[[], object]], iters: int, warmup: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Median seconds per call of each fn; repeats interleaved, order rotated so no peer always runs first."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(iters):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def build_paths(model: tips.TIPS, names: list[str], size: int, device: torch.device, workdir: Path):
    """{path name: fn(images) → CLS1 (B, D)} for the requested paths."""
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    if "fp32" in names:
        prepared = tips.prepare_for_inference(copy.deepcopy(model), device)
        fns["fp32"] = lambda x: prepared.encode_image(x).cls_alt
    if "fp32-eager" in names:
        fns["fp32-eager"] = lambda x: model.encode_image(x).cls_alt
    if "bf16" in names:
        def bf16(x: torch.Tensor) -> torch.Tensor:
            with tips.autocast(model, "bfloat16"):
                return model.encode_image(x).cls_alt
        fns["bf16"] = bf16
    for name, backend in (("int8", "auto"), ("int8-fbgemm", "fbgemm"), ("int8-torchao", "torchao")):
        if name in names:
            quantized = tips.quantize(copy.deepcopy(model), "int8", backend=backend)
            fns[name] = lambda x, q=quantized: q.encode_image(x).cls_alt
    if "onnx" in names or "onnx-int8" in names:
        import onnxruntime

        vision_only = copy.deepcopy(model)
        vision_only.text = None
        files = tips.save(vision_only, workdir / f"onnx{size}", format="onnx", image_size=size,
                          int8="onnx-int8" in names)
        for name, key in (("onnx", "vision"), ("onnx-int8", "vision_int8")):
            if name in names:
                sess = onnxruntime.InferenceSession(str(files[key]), providers=["CPUExecutionProvider"])
                fns[name] = lambda x, s=sess: torch.from_numpy(s.run(["cls_alt"], {"images": x.cpu().numpy()})[0])
    if "transformers" in names:
        hf = transformers_encoder(model, workdir).to(device)
        fns["transformers"] = lambda x: hf(pixel_values=x).last_hidden_state[:, 0]
    if "official" in names:
        ref = official_encoder(model, workdir).to(device)
        fns["official"] = lambda x: ref(x)[0][:, 0]
    return fns


def bench_size(model: tips.TIPS, names: list[str], size: int, batch: int, args, device: torch.device,
               workdir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(images/s, min cosine of CLS1 to fp32) per path at one input size."""
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(size)).to(device)
    paths = build_paths(model, names, size, device, workdir)
    with torch.inference_mode():
        ref = model.encode_image(x).cls_alt.float().cpu()
        cos = {n: torch.nn.functional.cosine_similarity(fn(x).float().cpu(), ref, dim=-1).min().item()
               for n, fn in paths.items()}

    def run(fn: Callable[[torch.Tensor], object]) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                return fn(x)
        return call

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seconds = time_interleaved({n: run(fn) for n, fn in paths.items()}, args.iters, args.warmup, sync)
    return {n: batch / s for n, s in seconds.items()}, cos


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="b14", help="tips variant (s14, b14, l14, so400m14, g14, tiny)")
    p.add_argument("--sizes", default="224,448", help="comma-separated square input sizes")
    p.add_argument("--batch", default="8,2", help="batch per size (comma-separated), or one for all sizes")
    p.add_argument("--paths", default=DEFAULT_PATHS, help=f"comma-separated subset of {','.join(PATHS)}")
    p.add_argument("--iters", type=int, default=3, help="timed repeats per path and size")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    names = args.paths.split(",")
    unknown = [n for n in names if n not in PATHS]
    if unknown:
        p.error(f"unknown --paths {unknown}; choose from {PATHS}")
    device = torch.device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    batches = batches * len(sizes) if len(batches) == 1 else batches
    if len(batches) != len(sizes):
        p.error(f"--batch gives {len(batches)} values for {len(sizes)} sizes")

    torch.manual_seed(0)
    model = tips.TIPS(tips.get_variant(args.variant)).eval().to(device)  # random weights, shared by every path
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"variant {args.variant}, device {device} (threads {threads}), {args.iters} repeats after {args.warmup} "
          f"warm-up, torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}\n")
    print("| input | batch | path | img/s | × fp32 | × transformers | × official | CLS1 cos to fp32-eager |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size, batch in zip(sizes, batches):
            speed, cos = bench_size(model, names, size, batch, args, device, Path(tmp))
            for n in speed:
                vs_fp32 = f"{speed[n] / speed['fp32']:.2f}" if "fp32" in speed else "-"
                vs_hf = f"{speed[n] / speed['transformers']:.2f}" if "transformers" in speed else "-"
                vs_off = f"{speed[n] / speed['official']:.2f}" if "official" in speed else "-"
                print(f"| {size} | {batch} | {n} | {speed[n]:.2f} | {vs_fp32} | {vs_hf} | {vs_off} | {cos[n]:.5f} |",
                      flush=True)


if __name__ == "__main__":
    main()
