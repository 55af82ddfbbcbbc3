"""``tips-predict``: dense predictions (depth, normals, segmentation) with a DPT head, or open-vocabulary
segmentation into classes you name, on any image source.

    tips-predict depth IMAGES... --model tips-v2-b14 --head tips-v2-b14-depth -o OUT
    tips-predict normals photos/ --random-init tiny --random-head -o OUT     # offline demo, random weights
    tips-predict open-vocab photos/ --model tips-v2-b14 --classes "road, car, tree, sky" -o OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Sequence

from ..formats.heads import load_head
from ..inference.loaded import resolve_device
from ..inference.open_vocab import (
    MODES, NONE_ID, TCL_TEMPLATES, OpenVocabOptions, OpenVocabRun, load_preset, parse_classes, preset_names,
    read_class_file, write_open_vocab,
)
from ..inference.predict import TASKS, PredictOptions, write_predictions
from ..io.images import DEFAULT_MAX_PIXELS
from ..io.sources import check_sources
from .allocator import tune_cpu_allocator
from .dense_args import add_tile_args, add_upsample_args, check_dense_args
from .errors import CliParser, add_debug_arg, report, run_main
from .model_args import add_model_args, add_output_arg, model_from_args

OPEN_VOCAB = "open-vocab"

EXAMPLES = """\
examples:
  # offline, random weights (shows the outputs, not real depth): demo images, then depth pictures in out/depth
  tips-extract --demo -o out/demo
  tips-predict depth out/demo/images --random-init tiny --random-head -o out/depth
  # official model and head (downloaded once into the cache)
  tips-predict segmentation photos/ --model tips-v2-b14 --head tips-v2-b14-segmentation -o out/segmentation
  # open vocabulary: your classes, "none of these" below a probability of 0.3 (docs/open_vocabulary.md)
  tips-predict open-vocab photos/ --model tips-v2-b14 --classes "road, car, tree, sky" --background-threshold 0.3 -o out/ov
  tips-predict open-vocab photos/ --model tips-v2-b14 --preset ade20k --mode whole -o out/ade
"""


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="tips-predict", description="Dense predictions (depth, normals, segmentation) "
                                "with a DPT head, or open-vocabulary segmentation (open-vocab), on any image source.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=(*TASKS, OPEN_VOCAB))
    p.add_argument("source", nargs="+", help="images: folders, globs, list files, image files, webdataset shards")
    add_output_arg(p, "output folder (per image a picture and the raw prediction, contact_sheet.png)", required=True)
    m = p.add_argument_group("model and head")
    add_model_args(m, seed_help="seed of --random-init and --random-head (default 0)")
    m.add_argument("--head", help="DPT head: Scenic zip, flat .npz, our folder, or official name (tips-v2-b14-depth)")
    m.add_argument("--random-head", action="store_true", help="randomly initialised official-preset head (demo)")
    r = p.add_argument_group("input")
    r.add_argument("--resolution", type=int, help="square side, or shorter side with --keep-aspect and open-vocab "
                                                  "(default: model's)")
    r.add_argument("--keep-aspect", action="store_true", help="keep the aspect ratio (sides rounded to the patch)")
    r.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip larger images (0 = no limit)")
    t = p.add_argument_group("high resolution (docs/dense_heads.md)")
    add_tile_args(t, "predictions")
    add_upsample_args(t, "resize the head's map to the image bilinearly (default) or with the joint bilateral "
                         "upsampler guided by the image (jbu; not open-vocab)", factor=False, default="bilinear")
    v = p.add_argument_group("open-vocab (classes you name; docs/open_vocabulary.md)")
    v.add_argument("--classes", help='comma-separated classes, "|" between synonyms: "road, car, person|people"')
    v.add_argument("--classes-file", help="one class per line, synonyms separated by ', '")
    v.add_argument("--preset", help=f"a benchmark vocabulary and its paper's threshold: {', '.join(preset_names())}")
    v.add_argument("--mode", choices=MODES, default="slide", help="slide windows (default) or the whole image at once")
    v.add_argument("--stride", type=int, help="slide stride (default 3/4 of the window: 336 at 448)")
    v.add_argument("--background-threshold", type=float, metavar="T",
                   help="pixels whose best softmax(scale * cos) is below T become background (preset: its paper's)")
    v.add_argument("--logit-scale", type=float, help="scale of that softmax (default: preset's, else the model's CLS1)")
    v.add_argument("--probabilities", action="store_true", help="also store per-class probabilities (float16)")
    v.add_argument("--fast-resize", action="store_true",
                   help="resize with torch instead of PIL (faster, not the official protocol's pixels)")
    o = p.add_argument_group("output and run")
    o.add_argument("--no-logits", action="store_true", help="segmentation: store the argmax only")
    o.add_argument("--sheet", type=int, default=16, help="pictures on the contact sheet")
    o.add_argument("--batch-size", type=int, default=8)
    o.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    o.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    o.add_argument("--no-progress", action="store_true")
    add_debug_arg(o)
    return p


def options_from_args(args: argparse.Namespace) -> PredictOptions:
    """The :class:`PredictOptions` that ``tips-predict``'s flags name."""
    return PredictOptions(
        task=args.task, head=args.head, random_head=args.random_head, seed=args.seed, resolution=args.resolution,
        keep_aspect=args.keep_aspect, batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
        max_pixels=args.max_pixels, dtype=args.dtype, quantize=args.quantize, logits=not args.no_logits,
        sheet=args.sheet, progress=not args.no_progress, tile=args.tile, overlap=args.overlap,
        upsample=args.upsample,
    )


def open_vocab_from_args(args: argparse.Namespace) -> tuple[list[tuple[str, ...]], list[str] | None, OpenVocabOptions,
                                                           OpenVocabRun]:
    """Classes, their display names (a preset's), :class:`OpenVocabOptions` and :class:`OpenVocabRun` from
    ``tips-predict open-vocab``'s flags."""
    given = [f for f, v in (("--classes", args.classes), ("--classes-file", args.classes_file),
                            ("--preset", args.preset)) if v]
    if len(given) != 1:
        raise ValueError(f"open-vocab needs exactly one of --classes, --classes-file, --preset (got {given or 'none'})")
    if args.head or args.random_head:
        raise ValueError("--head / --random-head are for depth, normals and segmentation; open-vocab uses the text tower")
    if args.upsample != "bilinear":
        raise ValueError("--upsample is for depth, normals and segmentation; open-vocab resizes its class scores "
                         "bilinearly")
    threshold, scale, background, names = args.background_threshold, args.logit_scale, NONE_ID, None
    if args.preset:
        preset = load_preset(args.preset)
        classes, names = list(preset.synonyms), preset.class_names
        threshold = preset.background_threshold if threshold is None else threshold
        scale = preset.logit_scale if scale is None else scale
        background = preset.background_class if preset.background_class is not None else NONE_ID
    else:
        classes = parse_classes(args.classes) if args.classes else read_class_file(args.classes_file)
    options = OpenVocabOptions(mode=args.mode, size=args.resolution, stride=args.stride, templates=TCL_TEMPLATES,
                               background_threshold=threshold or None, logit_scale=scale, background_id=background,
                               resize="torch" if args.fast_resize else "pil", tile=args.tile, overlap=args.overlap)
    run = OpenVocabRun(device=args.device, max_pixels=args.max_pixels, dtype=args.dtype, quantize=args.quantize,
                       probabilities=args.probabilities, sheet=args.sheet, progress=not args.no_progress)
    return classes, names, options, run


def main(argv: Sequence[str] | None = None) -> int:
    """``tips-predict``; returns 0 on success, 2 for a usage error, 1 with one line on stderr on failure."""
    tune_cpu_allocator()
    parser = build_parser()
    args = parser.parse_args(argv)
    check_dense_args(parser, args)
    return run_main(parser.prog, lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    resolve_device(args.device)  # a device that is not there, before anything is read or built
    check_sources(args.source)
    if args.task == OPEN_VOCAB:
        classes, names, options, run = open_vocab_from_args(args)
        result = write_open_vocab(args.source, args.out, model_from_args(args), classes, options, run, names)
    else:
        options = options_from_args(args)
        if args.head:  # the head's file, layout and task before the model is built (15-25 s for B/14)
            head = load_head(args.head)
            if head.task != args.task:
                raise ValueError(f"tips-predict {args.task}: the head {args.head} is a {head.task} head")
            options = dataclasses.replace(options, head=head, head_name=args.head)
        result = write_predictions(args.source, args.out, model_from_args(args), options)
    return report("tips-predict", result, args.device, args.dtype, args.quantize)


if __name__ == "__main__":
    sys.exit(main())
