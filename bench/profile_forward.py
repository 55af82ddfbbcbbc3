"""Where one image-tower forward spends its time: ``torch.profiler`` self time per operator, and the share of the
matrix products and attention (the work no implementation can skip) against everything else (copies, element-wise
ops, normalisation), for our encoder and transformers' ``Tipsv2VisionModel`` with the same weights.

    python -m bench.profile_forward --variant b14 --size 448 --batch 2
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import tips

from bench.extract import transformers_encoder
from bench.machine import cpu_name

MATMUL = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "mkldnn::_linear_pointwise", "aten::_mkl_linear",
          "aten::mkldnn_convolution")
ATTENTION = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_efficient_attention",
             "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_attention_math",
             "aten::_softmax")


def profile_table(fn, x: torch.Tensor, top: int) -> tuple[list[tuple[str, float, int]], float, float]:
    """(rows (operator, self ms, calls) of the ``top`` operators, total self ms, share of matmul + attention)."""
    with torch.inference_mode():
        fn(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    core = sum(e.self_cpu_time_total for e in events if e.key in MATMUL + ATTENTION)
    rows = [(e.key, e.self_cpu_time_total / 1e3, e.count)
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]]
    return rows, total / 1e3, core / max(total, 1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="b14")
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--no-transformers", action="store_true", help="profile our encoder only")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = tips.TIPS(tips.get_variant(args.variant))
    x = torch.rand(args.batch, 3, args.size, args.size)
    fns = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_transformers:
            hf = transformers_encoder(copy.deepcopy(model), Path(tmp))
            fns["transformers"] = lambda t: hf(pixel_values=t)
        tips.prepare_for_inference(model, "cpu")  # what tips-extract runs: packed oneDNN layers on the CPU
        fns = {"tips": lambda t: model.encode_image(t), **fns}
        print(f"{args.variant} at {args.size} px, batch {args.batch}, {torch.get_num_threads()} threads, {cpu_name()}, "
              f"torch {torch.__version__}\n")
        for name, fn in fns.items():
            rows, total, share = profile_table(fn, x, args.top)
            print(f"### {name}: {total:.0f} ms self time; matrix products + attention {100 * share:.1f} %\n")
            print("| operator | self ms | % | calls |\n|---|---|---|---|")
            for key, ms, calls in rows:
                print(f"| {key} | {ms:.1f} | {100 * ms / total:.1f} | {calls} |")
            print()


if __name__ == "__main__":
    main()
