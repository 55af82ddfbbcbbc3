"""``tips-export``: convert any checkpoint ``tips.load`` reads into the official ``.npz`` layout or our folder."""

from __future__ import annotations

import argparse
import sys

from .checkpoints import export_official, save_pretrained
from .loading import load


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tips-export",
        description="Write a TIPS checkpoint in the official PyTorch .npz layout (official keys only; extras in a "
        "sidecar JSON that tips.load reads) or as a save_pretrained folder.",
    )
    p.add_argument("source", help="checkpoint: our folder, official/Scenic vision .npz, HF folder, or official name")
    p.add_argument("--text", help="text-tower .npz that goes with an official vision .npz")
    p.add_argument("--tokenizer", help="'bpe' or a SentencePiece .model path")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", default="tips", help="file stem for the official layout: <name>_vision.npz, <name>_text.npz")
    p.add_argument("--format", choices=["official", "pretrained", "onnx"], default="official")
    p.add_argument("--image-size", type=int, help="onnx: fixed input side of the image graph (default: the model's)")
    p.add_argument("--int8", action="store_true", help="onnx: also write onnxruntime dynamic-int8 graphs")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.format != "onnx" and (args.image_size or args.int8):
        parser.error("--image-size and --int8 apply to --format onnx only")
    model = load(args.source, text=args.text, tokenizer=args.tokenizer)
    if args.format == "onnx":
        from .formats.onnx import write_onnx

        for kind, path in write_onnx(model, args.out, args.name, args.image_size, args.int8).items():
            print(f"wrote {kind}: {path}")
        return 0
    if args.format == "pretrained":
        path = save_pretrained(model, args.out)
        print(f"wrote {path}")
        return 0
    paths = export_official(model, args.out, args.name)
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    if model.cfg.text is not None and model.cfg.text.vocab_size != 32000:
        print(
            f"note: the text tower has a {model.cfg.text.vocab_size}-token vocabulary; the official scripts expect "
            "the 32k SentencePiece tokenizer, so use tips.load for this export.",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
