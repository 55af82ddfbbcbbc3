"""``tips-probe retention --before A --after B --dataset scenes:DIR``: what fine-tuning did to the dense features.

Runs the same linear segmentation and depth probes (the demo's fast protocol and settings) on both checkpoints,
and measures the mean cosine between the two models' patch features on every image of the probe's val split
(exact at any scale: no probe, no seed). The reading of a probe change follows the demo report's noise rule for
scores without an error bar: a change counts only beyond 5 % of the before value and the metric's floor.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

import torch
import torch.nn.functional as F

import tips
from tips.cli.errors import add_debug_arg
from tips.inference.loaded import resolve_device
from tips.io import write_json_atomic

from .demo_report import METRICS, RELATIVE_MARGIN, _get
from .options import TaskParser, add_config_args, parse_task_args

DENSE_METRICS = {m.key: m for m in METRICS if m.task in ("segmentation", "depth")}


def change_reading(before: float, after: float, higher_is_better: bool, floor: float) -> tuple[str, str]:
    """(verdict, one-line reading) of a probe score's change: ``better``, ``worse`` or ``none``."""
    gain = (after - before) if higher_is_better else (before - after)
    band = max(RELATIVE_MARGIN * abs(before), floor, 1e-12)
    size = f"{100 * abs(after - before) / max(abs(before), 1e-12):.0f} % of the before value, one seed, no error bar"
    if gain > band:
        return "better", f"fine-tuning improved it ({size})"
    if gain < -band:
        return "worse", f"fine-tuning cost dense quality ({size})"
    return "none", f"no clear change at this scale ({size})"


@torch.no_grad()
def patch_cosine(before: tips.TIPS, after: tips.TIPS, images: list, resolution: int, batch_size: int = 16,
                 device: str = "cpu") -> dict[str, float]:
    """Mean (over images and patches) cosine between the two models' patch tokens; also the lowest image mean.

    images: PIL images, resized to ``resolution`` square as the probes' fast protocol feeds them."""
    per_image: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = torch.stack([_to_tensor(im, resolution) for im in chunk]).to(device)  # (B, 3, R, R)
        a = before.encode_image(x).patch_tokens.flatten(1, -2)  # (B, N, D)
        b = after.encode_image(x).patch_tokens.flatten(1, -2)
        per_image.append(F.cosine_similarity(a.float(), b.float(), dim=-1).mean(1))  # (B,)
    cos = torch.cat(per_image)
    return {"mean": float(cos.mean()), "min_image": float(cos.min()), "num_images": len(images)}


def _to_tensor(image, resolution: int) -> torch.Tensor:
    from PIL import Image

    resized = image.convert("RGB").resize((resolution, resolution), Image.BICUBIC)
    return torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3
                                                                                   ).permute(2, 0, 1).float() / 255.0


def markdown(rows: dict[str, dict], cosine: dict[str, float]) -> str:
    lines = ["| metric (probe val split) | | before | after | reading |", "|---|---|---|---|---|"]
    for r in rows.values():
        lines.append(f"| {r['label']} | {'↑' if r['higher_is_better'] else '↓'} | {r['before']:.3f} | "
                     f"{r['after']:.3f} | {r['reading']} |")
    lines.append(f"| patch-feature cosine to the before model (mean over {cosine['num_images']} images) | ↑ | 1 | "
                 f"{cosine['mean']:.4f} | exact; lowest image {cosine['min_image']:.4f} |")
    return "\n".join(lines)


@dataclass
class RetentionOptions:
    before: str = MISSING  # the original checkpoint
    after: str = MISSING  # the fine-tuned checkpoint
    dataset: str = MISSING  # a dense dataset with train and val splits
    resolution: int = 64
    iterations: int = 300
    seed: int = 0
    out: str = MISSING
    device: str = "auto"


def build_parser() -> argparse.ArgumentParser:
    p = TaskParser(schema=RetentionOptions, prog="tips-probe retention", description=__doc__.split("\n\n")[0])
    p.add_argument("--before", help="(required) the original checkpoint (anything tips.load reads)")
    p.add_argument("--after", help="(required) the fine-tuned checkpoint (e.g. runs/ft/final)")
    p.add_argument("--dataset", help="(required) a dense dataset with train and val splits, e.g. scenes:data/scenes/probe")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--iterations", type=int, default=300, help="probe optimiser steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", help="(required) folder for both models' probe results and retention.json")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else the CPU), cpu, cuda, cuda:1 …")
    add_debug_arg(p)
    add_config_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from . import cli as probe_cli
    from .datasets import open_dataset
    from .demo import DEPTH_BINS, read_result

    args = parse_task_args(build_parser(), argv)
    out = Path(args.out)
    device = str(resolve_device(args.device))
    results: dict[str, dict[str, dict]] = {}
    for label, checkpoint in (("before", args.before), ("after", args.after)):
        folder = out / label
        dense = ["--model", checkpoint, "--dataset", args.dataset, "--resolution", str(args.resolution),
                 "--seed", str(args.seed), "--out", str(folder), "--protocol", "fast", "--cache-dir",
                 str(out / "cache"), "--iterations", str(args.iterations), "--num-vis", "0", "--num-workers", "0",
                 "--device", device]
        for argv_task in (["segmentation", *dense, "--object-classes"],
                          ["depth", *dense, "--mask", "objects", "--bins", str(DEPTH_BINS)]):
            code = probe_cli.main(argv_task)
            if code:
                raise SystemExit(f"tips-probe retention: the {argv_task[0]} probe of {checkpoint} failed ({code})")
        results[label] = {task: read_result(folder, task) for task in ("segmentation", "depth")}
    rows = {}
    for key, m in DENSE_METRICS.items():
        before = float(_get(results["before"][m.task]["metrics"], m.path, f"{m.task} (before)"))
        after = float(_get(results["after"][m.task]["metrics"], m.path, f"{m.task} (after)"))
        verdict, text = change_reading(before, after, m.higher_is_better, m.floor)
        rows[key] = {"label": m.label, "before": before, "after": after, "higher_is_better": m.higher_is_better,
                     "verdict": verdict, "reading": text}
    val = open_dataset(args.dataset, "val")
    images = [val.load_image(i) for i in range(len(val))]
    before_model, after_model = (tips.load(c, device=device) for c in (args.before, args.after))
    cosine = patch_cosine(before_model, after_model, images, args.resolution, device=device)
    table = markdown(rows, cosine)
    write_json_atomic(out / "retention.json", {"before": args.before, "after": args.after, "dataset": args.dataset,
                                               "metrics": rows, "patch_cosine": cosine}, indent=1)
    print(table)
    print(f"wrote {out / 'retention.json'}")
    return 0
