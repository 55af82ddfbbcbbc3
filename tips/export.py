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
    p.add_argument("source", nargs="?", help="checkpoint: our folder, official/Scenic vision .npz, HF folder, or official name")
    p.add_argument("--head", help="export this DPT head (Scenic zip, flat .npz, our folder, official name) instead")
    p.add_argument("--text", help="text-tower .npz that goes with an official vision .npz")
    p.add_argument("--tokenizer", help="'bpe' or a SentencePiece .model path")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--name", default="tips", help="file stem for the official layout: <name>_vision.npz, <name>_text.npz")
    p.add_argument("--format", choices=["official", "pretrained"], default="official")
    return p


HEAD_WRITERS = {"official": "export_official_head", "pretrained": "save_pretrained_head"}


def export_head(head, fmt: str, out, name: str | None = None):
    """Write a DPT head (a DenseHead or anything ``tips.load_head`` reads) as ``fmt``: ``official`` (the Scenic
    zip the official loader reads) or ``pretrained`` (our folder). Returns the path written."""
    from .formats import dpt

    if fmt not in HEAD_WRITERS:
        raise ValueError(f"no head writer for format {fmt!r}; known: {sorted(HEAD_WRITERS)}")
    if not isinstance(head, dpt.DenseHead):
        head = dpt.load_head(head)
    return getattr(dpt, HEAD_WRITERS[fmt])(head, out, name=name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.head:
        name = args.name if args.name != "tips" else None
        print(f"wrote {export_head(args.head, args.format, args.out, name if args.format == 'official' else None)}")
        return 0
    if args.source is None:
        raise SystemExit("tips-export: give a SOURCE checkpoint (or --head HEAD)")
    model = load(args.source, text=args.text, tokenizer=args.tokenizer)
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
