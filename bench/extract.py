"""Image-encoder throughput: ours (``TIPS.encode_image``, the path ``tips-extract`` runs) vs a bare timm ViT.

Peers, measured in the same run on the same input, repeats interleaved (the order rotates each repeat):
- ``timm``: ``timm.models.vision_transformer.VisionTransformer`` of the same architecture (width, depth, heads,
  patch 14, class token + 1 register token, ``no_embed_class``, LayerScale, ``num_classes=0``) built at the input
  size (no position resampling), ``forward_features``, fused (SDPA) attention;
- ``timm unfused``: the same with explicit softmax(QKᵀ)V attention, as the official TIPS encoder computes it.

Prints a markdown table of images/s (median over repeats) and the ratios ours/timm (target ≥ 0.95) and
ours/unfused.

    python bench/extract.py                            # S/14, batch 8 at 224 and 2 at 448, CPU fp32
    python bench/extract.py --device cuda --dtype bfloat16 --batch 64,16 --iters 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from typing import Callable

import torch
from timm.layers import GluMlp, Mlp
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import tips
from tips.models.variants import VisionConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def timm_reference(cfg: VisionConfig, size: int, fused: bool) -> VisionTransformer:
    """A bare timm ViT with the TIPS image-tower architecture at a fixed input size."""
    swiglu = cfg.ffn == "swiglu"
    vit = VisionTransformer(
        img_size=size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.width,
        depth=cfg.depth,
        num_heads=cfg.heads,
        mlp_ratio=(2 if swiglu else 1) * cfg.mlp_hidden / cfg.width,
        qkv_bias=True,
        init_values=1.0,
        class_token=True,
        reg_tokens=1,
        no_embed_class=True,
        num_classes=0,
        norm_layer=partial(nn.LayerNorm, eps=cfg.ln_eps),
        act_layer=nn.SiLU if swiglu else nn.GELU,
        mlp_layer=partial(GluMlp, gate_last=False) if swiglu else Mlp,
    )
    for block in vit.blocks:
        block.attn.fused_attn = fused
    return vit.eval()


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


def bench_size(model: tips.TIPS, size: int, batch: int, args, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """images/s of ours, timm and timm unfused at one input size."""
    x = torch.rand(batch, 3, size, size, device=device)  # (B, 3, H, W) in [0, 1]
    fused = timm_reference(model.cfg.vision, size, fused=True).to(device)
    unfused = timm_reference(model.cfg.vision, size, fused=False).to(device)
    unfused.load_state_dict(fused.state_dict())
    autocast = partial(torch.autocast, device.type, dtype=dtype, enabled=dtype != torch.float32)

    def run(fn: Callable[[torch.Tensor], object]) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode(), autocast():
                return fn(x)

        return call

    fns = {"ours": run(model.encode_image), "timm": run(fused.forward_features), "timm unfused": run(unfused.forward_features)}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seconds = time_interleaved(fns, args.iters, args.warmup, sync)
    return {name: batch / s for name, s in seconds.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="s14", help="tips variant (s14, b14, l14, so400m14, g14, tiny)")
    p.add_argument("--sizes", default="224,448", help="comma-separated square input sizes")
    p.add_argument("--batch", default="8,2", help="batch per size (comma-separated), or one for all sizes")
    p.add_argument("--iters", type=int, default=5, help="timed repeats per model and size")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="autocast dtype (default: bfloat16 on CUDA, else float32)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    batches = batches * len(sizes) if len(batches) == 1 else batches
    if len(batches) != len(sizes):
        p.error(f"--batch gives {len(batches)} values for {len(sizes)} sizes")

    torch.manual_seed(0)
    model = tips.TIPS(tips.get_variant(args.variant)).eval().to(device)
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"variant {args.variant}, device {device} ({dtype}, threads {threads}), {args.iters} repeats after "
          f"{args.warmup} warm-up, torch {torch.__version__}\n")
    print("| input | batch | ours img/s | timm img/s | timm unfused img/s | ours/timm | ours/unfused |")
    print("|---|---|---|---|---|---|---|")
    for size, batch in zip(sizes, batches):
        r = bench_size(model, size, batch, args, device, dtype)
        print(f"| {size} | {batch} | {r['ours']:.2f} | {r['timm']:.2f} | {r['timm unfused']:.2f} | "
              f"{r['ours'] / r['timm']:.3f} | {r['ours'] / r['timm unfused']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
