"""``--tile SIZE --overlap FRACTION`` and ``--upsample``, spelt one way in ``tips-predict`` and ``tips-extract``."""

from __future__ import annotations

import argparse
import math

from ..inference.upsample import DEFAULT_FACTOR, UPSAMPLERS


def add_tile_args(group: argparse._ArgumentGroup, what: str) -> None:
    """--tile / --overlap; ``what``: what the tiles produce (for the help)."""
    group.add_argument("--tile", type=int, metavar="SIZE",
                       help=f"{what} from overlapping tiles of SIZE px (a multiple of the patch; the model's native "
                            "size is best), blended without seams; without --resolution the photo keeps its own size")
    group.add_argument("--overlap", type=float, default=0.25, metavar="FRACTION",
                       help="with --tile: share of a tile overlapping its neighbour, in [0, 0.5) (default 0.25)")


def add_upsample_args(group: argparse._ArgumentGroup, help: str, factor: bool, default: str | None) -> None:
    """--upsample {bilinear,jbu} and, with ``factor``, --upsample-factor F."""
    group.add_argument("--upsample", choices=UPSAMPLERS, default=default, help=help)
    if factor:
        group.add_argument("--upsample-factor", type=float, default=DEFAULT_FACTOR, metavar="F",
                           help=f"with --upsample: times the patch grid, >= 1 (default {DEFAULT_FACTOR:g})")


def check_dense_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors of these flags that need no model (the tile's multiple of the patch is checked with it)."""
    if args.tile is not None and args.tile <= 0:
        parser.error(f"--tile {args.tile}: give a tile side in pixels, a multiple of the patch size (e.g. 448)")
    if not (math.isfinite(args.overlap) and 0 <= args.overlap < 0.5):
        parser.error(f"--overlap {args.overlap}: a fraction of the tile in [0, 0.5) (e.g. 0.25)")
    factor = getattr(args, "upsample_factor", DEFAULT_FACTOR)
    if not (math.isfinite(factor) and factor >= 1):
        parser.error(f"--upsample-factor {factor}: times the patch grid, a number >= 1 (e.g. 4)")
