"""``tips-export``: one command that writes a model (anything :func:`tips.load` reads) or a dense head in any
registered format. Each format maps to one writer in :mod:`tips.formats` (see :mod:`tips.formats.registry`).

    tips-export --model SOURCE --format {official,pretrained,transformers,timm,...} -o DIR
    tips-export --head HEAD [--model M] --format FMT -o DIR
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

from ..formats import registry
from ..formats.heads import load_head
from ..formats.loading import load
from ..formats.noise import known_noise_filtered
from .errors import CliParser, UsageError, add_debug_arg, renamed, run_main
from .model_args import TEXT_HELP, TOKENIZER_HELP, add_output_arg

EXAMPLES = """\
examples:
  # a model saved with tips.save (here a random tiny one) as the official .npz files
  python -c "import tips; tips.save(tips.create_model('tiny'), 'out/tiny')"
  tips-export --model out/tiny --format official -o out/tiny-official
  # an official model as a transformers folder, and a dense head in the official format
  tips-export --model tips-v2-b14 --format transformers -o out/tipsv2-b14-hf
  tips-export --head tips-v2-b14-depth --format official -o out/depth-head
  # a folder SentenceTransformer(DIR) loads: texts and images in the CLS1 (alt-text) space
  tips-export --model tips-v2-b14 --format sentence-transformers --cls alt -o out/tipsv2-b14-st
"""


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="tips-export",
        description="Write a TIPS model (or, with --head, a dense head) in another checkpoint format. Model formats: "
        f"{', '.join(registry.formats('model'))}; head formats: {', '.join(registry.formats('head')) or 'none yet'}.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("old_source", nargs="?", help=argparse.SUPPRESS)  # the positional model of earlier releases
    p.add_argument("--model", help="the model to export: our folder, official/Scenic vision .npz, transformers folder, "
                   "timm state dict, or an official name; with --head, the backbone the head belongs to "
                   "(when the format stores both)")  # fmt: skip
    p.add_argument("--head", help="export this dense head instead of a model (needs a head writer for --format)")
    p.add_argument("--text", metavar="NPZ", help=TEXT_HELP)
    p.add_argument("--tokenizer", help=TOKENIZER_HELP)
    add_output_arg(p, "output folder of the exported files", required=True)
    p.add_argument("--name", help="file stem where the format uses one (official: <name>_vision.npz; timm: <name>.safetensors)")
    p.add_argument("--format", required=True, help="one of the registered formats (see above)")
    p.add_argument("--resolution", type=int, help="onnx: fixed input side of the image graph (default: the model's)")
    renamed(p, "--image-size", "--resolution")
    p.add_argument("--cls", choices=("alt", "syn"), help="sentence-transformers: the image CLS images embed with "
                   "(alt: CLS1, alt-text space, the default; syn: CLS2, synthetic captions)")
    p.add_argument("--int8", action="store_true", help="onnx: also write onnxruntime dynamic-int8 graphs")
    add_debug_arg(p)
    return p


def _call(writer: Any, obj: Any, out: Path, options: dict[str, Any]) -> Any:
    """Call ``writer(obj, out, **options)``, refusing options this writer does not take (instead of dropping them)."""
    params = inspect.signature(writer).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in params and not takes_any]
    if unknown:
        flag = {"image_size": "resolution"}.get(unknown[0], unknown[0])
        raise UsageError(f"--{flag} does not apply to this format")
    return writer(obj, out, **options)


def _report(result: Any) -> None:
    items = result.items() if isinstance(result, dict) else [("output", result)]
    for kind, path in items:
        print(f"wrote {kind}: {path}")


def main(argv: list[str] | None = None) -> int:
    """``tips-export``; returns 0 on success, 2 for a usage error, 1 with one line on stderr on failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.old_source is not None:
        parser.error(f"the model is now a flag: --model {args.old_source}")
    if not (args.head or args.model):
        parser.error("give --model SOURCE (or --head HEAD)")
    with known_noise_filtered():  # torchao's and onnxruntime's notices, by their exact text
        return run_main(parser.prog, lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {"name": args.name} if args.name else {}
    if args.resolution:
        options["image_size"] = args.resolution
    if args.int8:
        options["int8"] = True
    if args.cls:
        options["cls"] = args.cls
    try:
        writer = registry.get_writer(args.format, "head" if args.head else "model")
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.head:
        if args.model:
            options["model"] = load(args.model, tokenizer=args.tokenizer)
        _report(_call(writer, load_head(args.head), Path(args.out), options))
        return 0
    model = load(args.model, text=args.text, tokenizer=args.tokenizer)
    _report(_call(writer, model, Path(args.out), options))
    if args.format == "official" and model.cfg.text is not None and model.cfg.text.vocab_size != 32000:
        print(
            f"note: the text tower has a {model.cfg.text.vocab_size}-token vocabulary; the official scripts expect "
            "the 32k SentencePiece tokenizer, so use tips.load for this export.",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
