"""``tips-index``: a faiss index of an extraction folder's embeddings, sized to a memory budget."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..index import EmbeddingSpace, Index, parse_memory
from ..index.vector_index import INFO_FILE
from ..inference.embedding_files import has_layout, read_embeddings
from ..inference.extract import load_features
from ..inference.job_folder import MANIFEST, check_complete, read_manifest
from .errors import CliParser, add_debug_arg, run_main


EXAMPLES = """\
examples:
  # CLS1 vectors (alt-text space) of an extraction folder, within the default --max-memory 1GB
  tips-index features/ -o index/
  # CLS2 (synthetic-caption space), and region vectors of an extraction made with --regions K
  tips-index features/ -o index-syn/ --kind cls_syn
  tips-index features/ -o index-regions/ --kind region --max-memory 4GB
  # append the rows of another extraction whose ids the index lacks
  tips-index more-features/ -o index/ --add
  # (docs/extraction.md, "Index and search")
"""


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="tips-index", description=__doc__.splitlines()[0],
                                epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("features", type=Path, help="a complete tips-extract output folder")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="DIR", help="the index folder")
    p.add_argument("--kind", choices=("cls_alt", "cls_syn", "region"), default="cls_alt",
                   help="which vectors: cls_alt (CLS1, alt-text space; default), cls_syn (CLS2, captions) or region "
                        "(K x K cells of an extraction made with --regions K)")
    p.add_argument("--max-memory", default="1GB", help="index size budget, e.g. 1GB, 512MB (default 1GB): Flat "
                   "(exact) when it fits, else IVF-SQ8, else OPQ-IVF-PQ")
    p.add_argument("--recall-target", type=float, default=0.95,
                   help="recall@10 an approximate index's nprobe is tuned to (default 0.95)")
    p.add_argument("--dims", type=int, metavar="D", help="keep the first D dimensions (Matryoshka truncation, then "
                   "renormalised); queries are cut the same way")
    p.add_argument("--exact", action="store_true", help="a region index may be Flat when it fits --max-memory "
                   "(by default region indexes are quantised: K² vectors per image)")
    p.add_argument("--add", action="store_true", help="append to the index in -o the rows whose ids it lacks")
    p.add_argument("--force", action="store_true", help="replace an index already in -o")
    add_debug_arg(p)
    return p


def features_space(folder: Path, kind: str, width: int) -> EmbeddingSpace:
    """The space of an extraction folder's vectors, from the manifest it was written with."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise ValueError(f"{folder} has no {MANIFEST}: index a folder written by this release's tips-extract")
    model = manifest["identity"]["model"]
    return EmbeddingSpace(model=str(model["name"]), fingerprint=str(model["weights"]), kind=kind, width=width)


def source_paths(folder: Path, ids: list[str]) -> list[str]:
    """Where each row's image is: the source folder joined with its id when the job read one folder, else the id."""
    sources = read_manifest(folder)["identity"].get("sources", [])
    root = Path(sources[0]) if len(sources) == 1 and Path(sources[0]).is_dir() else None
    return [str(root / i) if root else str(i) for i in ids]


def read_vectors(folder: Path, kind: str) -> tuple[np.ndarray, dict[str, list]]:
    """(N, D) float32 vectors of ``kind`` and their rows, from the npy/parquet layout when the folder has it."""
    if has_layout(folder, kind) or kind == "region":
        check_complete(folder)
        return read_embeddings(folder, kind)
    features = load_features(folder)
    ids = [str(i) for i in features.ids]
    return getattr(features, kind).float().numpy(), {"id": ids, "source": source_paths(folder, ids)}


def key_columns(rows: dict[str, list]) -> list[str]:
    """What names one vector: its image id, and its cell for region vectors."""
    return ["id", "cell"] if "cell" in rows else ["id"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main("tips-index", lambda: build(args), debug=args.debug)


def build(args: argparse.Namespace) -> int:
    """The body of ``tips-index``: read, build or grow, save, report."""
    if not 0 < args.recall_target <= 1:
        raise ValueError(f"--recall-target {args.recall_target}: expected a number in (0, 1]")
    budget = parse_memory(args.max_memory)
    vectors, rows = read_vectors(args.features, args.kind)
    full = vectors.shape[1]
    if args.dims is not None:
        if not 1 <= args.dims <= full:
            raise ValueError(f"--dims {args.dims}: expected 1..{full} (the vectors' width)")
        vectors = vectors[:, :args.dims]
    space = features_space(args.features, args.kind, vectors.shape[1])
    if args.dims is not None and args.dims < full:
        space = EmbeddingSpace(space.model, space.fingerprint, space.kind, args.dims, truncated_from=full)
    exists = (args.out / INFO_FILE).is_file()
    if args.add:
        index = Index.open(args.out)
        known = set(zip(*(index.rows.column(c).to_pylist() for c in key_columns(rows))))
        keep = np.array([k not in known for k in zip(*(rows[c] for c in key_columns(rows)))], dtype=bool)
        index.add(vectors[keep], {c: [v for v, k in zip(col, keep) if k] for c, col in rows.items()}, space)
        index.save(args.out)
        print(f"added {int(keep.sum())} of {len(keep)} rows ({len(keep) - int(keep.sum())} already there): "
              f"{len(index)} vectors in {args.out}")
        return 0
    if exists and not args.force:
        raise ValueError(f"{args.out} already holds an index: pass --add to append to it or --force to replace it")
    index = Index.build(vectors, rows, space, budget, recall_target=args.recall_target,
                        allow_flat=args.kind != "region" or args.exact)
    options = read_manifest(args.features)["identity"].get("options", {})
    index.info["extraction"] = {"folder": str(args.features.resolve()), "resolution": options.get("resolution")}
    index.save(args.out)
    tuned = index.info["tuning"][-1] if index.info["tuning"] else None
    how = f", nprobe {index.info['nprobe']} (recall@10 {tuned['recall']:.3f} on a sample)" if tuned else " (exact)"
    print(f"indexed {len(index)} {args.kind} vectors of {space.model} as {index.info['factory']}{how} → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
