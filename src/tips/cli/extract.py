"""``tips-extract``: encode images with a TIPS model into safetensors."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from ..inference.extract import ExtractOptions, ExtractResult, extract
from ..inference.loaded import build_model, resolve_device
from ..io.sources import check_sources
from ..io.images import DEFAULT_MAX_PIXELS
from ..models.dtypes import DTYPES
from .allocator import tune_cpu_allocator
from .dense_args import add_tile_args, add_upsample_args, check_dense_args
from .demo_images import write_demo_images
from .errors import CliParser, add_debug_arg, report, run_main
from .model_args import add_inference_args, add_model_args, add_output_arg, model_from_args

EXAMPLES = """\
examples:
  # offline quick start: demo images, a random tiny model, features + pca.png + text embeddings in out/demo
  tips-extract --demo -o out/demo
  # any image source into safetensors, with patch tokens and a PCA picture of the first 4 images
  tips-extract out/demo/images -o out/features --random-init tiny --patch-tokens --pca 4
  # an official model (downloaded once into the cache), webdataset shards, 10,000 images per output file
  tips-extract 'shards/train-{000000..000009}.tar' -o out/features --model tips-v2-b14 --shard-size 10000
  # every GPU of a node (chunk i on process i mod 8; the same command again resumes a killed run)
  torchrun --nproc_per_node 8 --no-python tips-extract photos/ -o out/features --model tips-v2-b14 --regions 4
"""


def demo(out_dir: str | os.PathLike, device: str | None = None, progress: bool = True) -> ExtractResult:
    """Quick start: procedural images → a random ``tiny`` model → features, PCA picture and text embeddings."""
    out_dir = Path(out_dir)
    write_demo_images(out_dir / "images")
    prompts = out_dir / "prompts.txt"
    prompts.write_text("a red circle\na green square\na colour gradient\n", encoding="utf-8")
    options = ExtractOptions(patch_tokens=True, pca=6, texts=prompts, batch_size=8, device=device, progress=progress)
    return extract(out_dir / "images", out_dir, build_model(random_init="tiny"), options)


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="tips-extract", description="Encode images with a TIPS model into safetensors.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="*", help="folder, glob, list file, image, or webdataset shards (a-{000..009}.tar)")
    add_output_arg(p, "output folder (features-*.safetensors, img_emb/, metadata/, ids.jsonl, skipped.json, ...)")
    p.add_argument("--demo", nargs="?", const="", metavar="DIR",
                   help="generate demo images into DIR/images (DIR default: --out) and extract them into DIR")
    add_model_args(p, inference=False)
    r = p.add_argument_group("input")
    r.add_argument("--resolution", type=int, help="square side, or shorter side with --keep-aspect (default: model's)")
    r.add_argument("--keep-aspect", action="store_true", help="keep the aspect ratio (sides rounded to the patch)")
    r.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip larger images (0 = no limit)")
    o = p.add_argument_group("output")
    o.add_argument("--patch-tokens", action="store_true", help="also store patch tokens (N, h, w, D)")
    o.add_argument("--pool-patches", type=int, metavar="K", help="store patch tokens average-pooled to K x K")
    add_tile_args(o, "with --patch-tokens: patch tokens")
    add_upsample_args(o, "with --patch-tokens: store them at --upsample-factor times the patch grid as float16, "
                         "by jbu (joint bilateral, guided by the image) or bilinear", factor=True, default=None)
    o.add_argument("--shard-size", type=int, metavar="N", help="images per output file (features-00000.safetensors …)")
    o.add_argument("--save-dtype", choices=sorted(DTYPES), default="float32", help="dtype of stored features")
    o.add_argument("--texts", help="prompts file (one per line) → text_embeddings.safetensors")
    o.add_argument("--pca", type=int, default=0, metavar="N", help="PCA picture of the first N images (pca.png)")
    o.add_argument("--regions", type=int, metavar="K", help="also store K x K region vectors per image (value-readout "
                   "patch features per cell, normalised) for text → region search (tips-index --kind region)")
    x = p.add_argument_group("run")
    x.add_argument("--batch-size", type=int, default=32)
    x.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    x.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    add_inference_args(x)
    x.add_argument("--no-progress", action="store_true")
    add_debug_arg(x)
    x.add_argument("--rank", type=int, help="this process's share without a launcher (SLURM arrays: "
                   "$SLURM_ARRAY_TASK_ID); torchrun and accelerate launch set it themselves")
    x.add_argument("--world-size", type=int, help="the number of processes sharing the job (with --rank)")
    x.add_argument("--force", action="store_true",
                   help="the output folder holds another job's extraction: replace its files (otherwise refused)")
    return p


def options_from_args(args: argparse.Namespace) -> ExtractOptions:
    """The :class:`ExtractOptions` that ``tips-extract``'s flags name."""
    return ExtractOptions(
        resolution=args.resolution, keep_aspect=args.keep_aspect, batch_size=args.batch_size,
        num_workers=args.num_workers, device=args.device, dtype=args.dtype, save_dtype=args.save_dtype,
        quantize=args.quantize, patch_tokens=args.patch_tokens, pool_patches=args.pool_patches,
        shard_size=args.shard_size, max_pixels=args.max_pixels, texts=args.texts, pca=args.pca,
        progress=not args.no_progress, force=args.force, regions=args.regions, rank=args.rank,
        world_size=args.world_size, tile=args.tile, overlap=args.overlap, upsample=args.upsample,
        upsample_factor=args.upsample_factor,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``tips-extract``; returns 0 on success, 2 for a usage error, 1 with one line on stderr on failure."""
    tune_cpu_allocator()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo is not None and not (args.demo or args.out):
        parser.error("--demo needs a folder: --demo DIR or --demo -o DIR")
    if args.demo is None and (not args.source or not args.out):
        parser.error("give a SOURCE and -o/--out DIR (or --demo -o DIR)")
    check_dense_args(parser, args)
    return run_main(parser.prog, lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    if args.demo is not None:
        result = demo(args.demo or args.out, device=args.device, progress=not args.no_progress)
    else:
        resolve_device(args.device)  # a device that is not there, before anything is read or built
        check_sources(args.source)
        if args.texts is not None and not Path(args.texts).is_file():  # also before the model
            raise FileNotFoundError(f"--texts {args.texts}: no such file (one prompt per line)")
        result = extract(args.source, args.out, model_from_args(args), options_from_args(args))
    return report("tips-extract", result, args.device, args.dtype, args.quantize)


if __name__ == "__main__":
    sys.exit(main())
