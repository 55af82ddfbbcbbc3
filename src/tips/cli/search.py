"""``tips-search``: text → images, image → images and text → regions over a ``tips-index`` folder, with the model
that built it (a query embedded by another model, or for another vector kind, is refused naming both)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..index import Index
from ..index.queries import embed_images, embed_texts, model_space, region_heat, truncate
from ..index.sheet import contact_sheet
from ..io.atomic import write_json_atomic
from .errors import CliParser, UsageError, add_debug_arg, run_main
from .model_args import add_model_args, model_from_args


EXAMPLES = """\
examples:
  # text → images, two queries, JSON hits and a contact sheet
  tips-search --index index/ --model tips-v2-b14 --query "a red car" --query "two dogs" -o hits/
  # image → images (near duplicates too)
  tips-search --index index/ --model tips-v2-b14 --image photo.jpg -k 5
  # text → regions: the best cells, each top image drawn with the query's heat map
  tips-search --index index-regions/ --model tips-v2-b14 --query "a bicycle" -o where/
  # (docs/extraction.md, "Index and search")
"""


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="tips-search", description=__doc__.splitlines()[0],
                                epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=Path, required=True, metavar="DIR", help="a tips-index folder")
    p.add_argument("--query", action="append", default=[], metavar="TEXT", help="a text query (repeatable)")
    p.add_argument("--image", action="append", default=[], type=Path, metavar="PATH", help="an image query (repeatable)")
    p.add_argument("-k", type=int, default=10, help="hits per query (default 10)")
    p.add_argument("--resolution", type=int, help="image-query side (default: the index's extraction resolution, "
                   "else the model's native size)")
    p.add_argument("-o", "--out", type=Path, metavar="DIR", help="write hits.json and a contact sheet hits.png "
                   "(region indexes: each top image with the query's heat map and the hit's cell)")
    add_model_args(p, inference=False)
    add_debug_arg(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.query and not args.image:
        parser.error("give at least one --query TEXT or --image PATH")
    if args.k < 1:
        parser.error(f"-k {args.k}: expected an integer >= 1")
    return run_main("tips-search", lambda: search(args), debug=args.debug)


def search(args: argparse.Namespace) -> int:
    """The body of ``tips-search``: check the inputs, open the index, then load the model and query."""
    missing = [str(p) for p in args.image if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"--image: no such file: {', '.join(missing)}")
    index = Index.open(args.index)  # before the model: a wrong folder costs no model load
    if args.image and index.space.kind == "region":
        raise UsageError(f"{args.index} is a region index: search it with --query TEXT (image queries search "
                         "a cls_alt or cls_syn index)")
    loaded = model_from_args(args)
    model = loaded.model
    width = index.space.width if index.space.truncated_from else None
    space = model_space(model, loaded.name, index.space.kind, width)
    cut = (lambda v: truncate(v, width)) if width else (lambda v: v)  # noqa: E731
    resolution = args.resolution or index.info.get("extraction", {}).get("resolution") or model.image_size
    labels, results = [], []
    text_vectors = embed_texts(model, args.query) if args.query else None
    if args.query:
        found = index.search(cut(text_vectors), args.k, space)
        labels += list(args.query)
        results += list(zip(found.rows, found.scores.tolist()))
    if args.image:
        images = [Image.open(p) for p in args.image]
        found = index.search(cut(embed_images(model, images, resolution, index.space.kind)), args.k, space)
        labels += [f"image: {p.name}" for p in args.image]
        results += list(zip(found.rows, found.scores.tolist()))
    report = [{"query": q, "hits": [{**h, "score": s} for h, s in zip(rows, scores)]} for q, (rows, scores) in zip(labels, results)]
    for entry in report:
        print(entry["query"])
        for rank, hit in enumerate(entry["hits"], 1):
            print(f"  {rank:>3}  {hit['score']:.4f}  {hit['id']}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out / "hits.json", report)
        heats = None
        if index.space.kind == "region":  # where in each top image the query is, computed now from its patches
            heats = [[_heat(model, hit, resolution, text_vectors[q]) for hit in rows] for q, (rows, _) in enumerate(results)]
        contact_sheet(labels, [r for r, _ in results], [s for _, s in results], args.out / "hits.png", heats)
        print(f"wrote {args.out / 'hits.json'} and {args.out / 'hits.png'}")
    return 0


def _heat(model, hit: dict, resolution: int, query):
    try:
        with Image.open(hit.get("source", hit["id"])) as image:
            return region_heat(model, image, resolution, query)
    except OSError:
        return None  # the sheet says the image is not readable here


if __name__ == "__main__":
    sys.exit(main())
