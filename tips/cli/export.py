"""``tips-export``: one command that writes a model (anything :func:`tips.load` reads) or a dense head in any
registered format. Each format maps to one writer in :mod:`tips.formats` (see :mod:`tips.formats.registry`).

    tips-export SOURCE --format {official,pretrained,transformers,timm,...} -o DIR
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
from .model_args import TEXT_HELP, TOKENIZER_HELP, add_output_arg

EXAMPLES = """\
examples:
  # a model saved with tips.save (here a random tiny one) as the official .npz files
  python -c "import tips; tips.save(tips.create_model('tiny'), 'out/tiny')"
  tips-export out/tiny --format official -o out/tiny-official
  # an official model as a transformers folder, and a dense head in the official format
  tips-export tips-v2-b14 --format transformers -o out/tipsv2-b14-hf
  tips-export --head tips-v2-b14-depth --format official -o out/depth-head
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tips-export",
        description="Write a TIPS model (or, with --head, a dense head) in another checkpoint format. Model formats: "
        f"{', '.join(registry.formats('model'))}; head formats: {', '.join(registry.formats('head')) or 'none yet'}.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", nargs="?", help="model: our folder, official/Scenic vision .npz, transformers folder, "
                   "timm state dict, or an official name")  # fmt: skip
    p.add_argument("--head", help="export this dense head instead of a model (needs a head writer for --format)")
    p.add_argument("--model", help="with --head: the backbone the head belongs to (when the format stores both)")
    p.add_argument("--text", metavar="NPZ", help=TEXT_HELP)
    p.add_argument("--tokenizer", help=TOKENIZER_HELP)
    add_output_arg(p, "output folder of the exported files", required=True)
    p.add_argument("--name", help="file stem where the format uses one (official: <name>_vision.npz; timm: <name>.safetensors)")
    p.add_argument("--format", default="official", help="one of the registered formats (default: official)")
    p.add_argument("--image-size", type=int, help="onnx: fixed input side of the image graph (default: the model's)")
    p.add_argument("--int8", action="store_true", help="onnx: also write onnxruntime dynamic-int8 graphs")
    return p


def _call(writer: Any, obj: Any, out: Path, options: dict[str, Any]) -> Any:
    """Call ``writer(obj, out, **options)``, refusing options this writer does not take (instead of dropping them)."""
    params = inspect.signature(writer).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in params and not takes_any]
    if unknown:
        raise SystemExit(f"tips-export: --{unknown[0]} does not apply to this format")
    return writer(obj, out, **options)


def _report(result: Any) -> None:
    items = result.items() if isinstance(result, dict) else [("output", result)]
    for kind, path in items:
        print(f"wrote {kind}: {path}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options: dict[str, Any] = {"name": args.name} if args.name else {}
    if args.image_size:
        options["image_size"] = args.image_size
    if args.int8:
        options["int8"] = True
    kind = "head" if args.head else "model"
    try:
        writer = registry.get_writer(args.format, kind)
    except ValueError as e:
        raise SystemExit(f"tips-export: {e}") from None
    if args.head:
        if args.model:
            options["model"] = load(args.model, tokenizer=args.tokenizer)
        _report(_call(writer, load_head(args.head), Path(args.out), options))
        return 0
    if args.source is None:
        raise SystemExit("tips-export: give a SOURCE model (or --head HEAD)")
    model = load(args.source, text=args.text, tokenizer=args.tokenizer)
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
