"""``tips-predict``: dense predictions (depth, normals, segmentation) with a DPT head on any image source.

    tips-predict depth IMAGES... --model tips-v2-b14 --head tips-v2-b14-depth -o OUT
    tips-predict normals photos/ --random-init tiny --random-head -o OUT     # offline demo, random weights
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..inference.extract import NoReadableImages
from ..inference.loaded import resolve_device
from ..inference.precision import print_bf16_hint
from ..inference.predict import TASKS, PredictOptions, write_predictions
from ..io.images import DEFAULT_MAX_PIXELS
from .allocator import tune_cpu_allocator
from .model_args import add_model_args, add_output_arg, model_from_args

EXAMPLES = """\
examples:
  # offline, random weights (shows the outputs, not real depth): demo images, then depth pictures in out/depth
  tips-extract --demo -o out/demo
  tips-predict depth out/demo/images --random-init tiny --random-head -o out/depth
  # official model and head (downloaded once into the cache)
  tips-predict segmentation photos/ --model tips-v2-b14 --head tips-v2-b14-segmentation -o out/segmentation
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tips-predict", description="Dense predictions (depth, normals, segmentation) "
                                "with a DPT head on any image source.", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=TASKS)
    p.add_argument("source", nargs="+", help="images: folders, globs, list files, image files, webdataset shards")
    add_output_arg(p, "output folder (per image a picture and the raw prediction, contact_sheet.png)", required=True)
    m = p.add_argument_group("model and head")
    add_model_args(m, seed_help="seed of --random-init and --random-head (default 0)")
    m.add_argument("--head", help="DPT head: Scenic zip, flat .npz, our folder, or official name (tips-v2-b14-depth)")
    m.add_argument("--random-head", action="store_true", help="randomly initialised official-preset head (demo)")
    r = p.add_argument_group("input")
    r.add_argument("--resolution", type=int, help="square side, or shorter side with --keep-aspect (default: model's)")
    r.add_argument("--keep-aspect", action="store_true", help="keep the aspect ratio (sides rounded to the patch)")
    r.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip larger images (0 = no limit)")
    o = p.add_argument_group("output and run")
    o.add_argument("--no-logits", action="store_true", help="segmentation: store the argmax only")
    o.add_argument("--sheet", type=int, default=16, help="pictures on the contact sheet")
    o.add_argument("--batch-size", type=int, default=8)
    o.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    o.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    o.add_argument("--no-progress", action="store_true")
    return p


def options_from_args(args: argparse.Namespace) -> PredictOptions:
    """The :class:`PredictOptions` that ``tips-predict``'s flags name."""
    return PredictOptions(
        task=args.task, head=args.head, random_head=args.random_head, seed=args.seed, resolution=args.resolution,
        keep_aspect=args.keep_aspect, batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
        max_pixels=args.max_pixels, dtype=args.dtype, quantize=args.quantize, logits=not args.no_logits,
        sheet=args.sheet, progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``tips-predict``; returns 0 on success, 1 with a message on stderr on failure."""
    tune_cpu_allocator()
    args = build_parser().parse_args(argv)
    try:
        result = write_predictions(args.source, args.out, model_from_args(args), options_from_args(args))
    except (ValueError, KeyError, FileNotFoundError, NoReadableImages) as e:
        print(f"tips-predict: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    print(result.summary())
    print_bf16_hint("tips-predict", resolve_device(args.device), args.dtype, args.quantize)
    return 0


if __name__ == "__main__":
    sys.exit(main())
