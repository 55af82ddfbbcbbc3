"""``tips-shards``: an image folder and a captions table, or existing shards, to reproducible webdataset shards.

Each sample holds the image (``jpg``/``png``/``webp``), the alt-text ``txt`` and ``json`` =
``{"synthetic_captions": [...], "source": ..., ...}``, the layout ``tips.data`` reads. Rows without synthetic captions are written
with an empty list: the training pipeline drops such samples until ``tips-caption`` has added one.

Output: ``OUT/shard-000000.tar …``, ``OUT/manifest.json`` (fingerprint, per-shard counts, bytes, sha256, input rows)
and ``OUT/report.json`` (every skipped row with its reason). Both are rewritten after each finished shard, so a re-run
keeps verified finished shards untouched and rebuilds from the first unfinished one; output bytes depend only on the
input and the options, never on interruptions.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tips.io import DEFAULT_MAX_PIXELS, ImageDecodeError, ShardFile, encode_sample, sha256_file, write_json_atomic
from tips.cli.errors import CliParser, add_debug_arg, renamed, run_main
from tips.cli.model_args import add_output_arg

from .shard_inputs import Record, shard_records, table_records, table_rows
from .tario import (
    JPEG_QUALITY,
    dumps_json,
    image_member,
    read_json,
    resolve_shards,
)

FORMAT = "tips-shards/1"
SHARD_NAME = "shard-{:06d}.tar"
SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")
DEFAULT_MAX_COUNT = 10_000


@dataclass
class Skip:
    """A row left out of the shards. ``row`` counts data rows (or input samples) from 0."""

    row: int
    key: str | None
    file: str | None
    reason: str
    detail: str


@dataclass
class ShardInfo:
    """A finished shard: input rows ``[rows[0], rows[1])`` went into it (or were skipped while it was open)."""

    name: str
    count: int
    bytes: int
    sha256: str
    rows: list[int]
    without_synthetic_captions: int


@dataclass
class Report:
    """What a ``write_shards`` run produced; ``reused_shards`` finished shards came from an earlier run."""

    out_dir: Path
    fingerprint: str
    shards: list[ShardInfo]
    skips: list[Skip]
    reused_shards: int = 0

    @property
    def written(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def skipped(self) -> int:
        return len(self.skips)

    @property
    def without_synthetic_captions(self) -> int:
        return sum(s.without_synthetic_captions for s in self.shards)

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(s.reason for s in self.skips).items()))

    def to_json(self, complete: bool) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "complete": complete,
            "written": self.written,
            "skipped": self.skipped,
            "skipped_by_reason": self.skipped_by_reason(),
            "without_synthetic_captions": self.without_synthetic_captions,
            "skips": [asdict(s) for s in self.skips],
        }


# --------------------------------------------------------------------------------------------------------- writing


@dataclass
class _Input:
    records: Callable[[], Iterator[Record]]
    total: int | None
    digest: str
    description: dict[str, Any]


def _plan_input(
    images: Path | None, captions: Path | None, from_shards: Any, source: str | None, image_column: str
) -> _Input:
    """The records to shard, their count if known, and a digest of the input for the fingerprint.

    A table is fingerprinted by its bytes, shards by their names and sizes (hashing every input image or shard would
    read the whole input twice): images and input shards are assumed not to change between a run and its resume.
    """
    if captions is not None:
        if images is None:
            raise ValueError("a captions table needs the image folder its paths are relative to")
        images, captions = Path(images), Path(captions)
        if not images.is_dir():
            raise FileNotFoundError(f"image folder {images} does not exist")
        total = sum(1 for _ in table_rows(captions, (image_column, "alt_text")))
        src = source or images.resolve().name
        description = {"captions": str(captions), "images": str(images), "source": src}
        return _Input(lambda: table_records(captions, images, image_column, src), total,
                      f"{sha256_file(captions)}:{src}", description)
    paths = resolve_shards(from_shards)
    src = source or paths[0].resolve().parent.name  # only for samples that lack a json member
    digest = hashlib.sha256(dumps_json([src, [[p.name, p.stat().st_size] for p in paths]])).hexdigest()
    return _Input(lambda: shard_records(paths, src), None, digest, {"shards": [str(p) for p in paths], "source": src})


def _resume(out: Path, fingerprint: str, overwrite: bool) -> tuple[list[ShardInfo], list[Skip]]:
    """Finished shards of an earlier run of the same input and options (verified by sha256) and their skips."""
    manifest, report = read_json(out / "manifest.json"), read_json(out / "report.json")
    if manifest is None:
        return [], []
    if manifest.get("fingerprint") != fingerprint:
        if overwrite:
            return [], []
        raise FileExistsError(
            f"{out} holds shards made from another input or with other options (manifest.json fingerprint differs); "
            "pass --force to replace them, or choose another folder"
        )
    if report is None or report.get("fingerprint") != fingerprint:
        return [], []
    finished = []
    for entry in manifest.get("shards", []):
        info = ShardInfo(**entry)
        path = out / info.name
        if not path.is_file() or path.stat().st_size != info.bytes or sha256_file(path) != info.sha256:
            break
        finished.append(info)
    start = finished[-1].rows[1] if finished else 0
    return finished, [Skip(**s) for s in report.get("skips", []) if s["row"] < start]


class _ShardRun:
    """The shard being filled, the finished ones and the skips; saves manifest and report after each shard."""

    def __init__(self, out: Path, report: Report, header: dict, options: dict) -> None:
        self.out, self.report, self.header, self.options = out, report, header, options
        self.current: ShardFile | None = None
        self.without_synthetic = 0
        self.seen: set[str] = set()

    @property
    def next_row(self) -> int:
        return self.report.shards[-1].rows[1] if self.report.shards else 0

    def add(self, record: Record) -> None:
        """Verify the record's image and write the sample, or list the record as skipped."""
        problem = record.problem
        if problem is None and record.key in self.seen:
            problem = ("duplicate_key", f"key {record.key!r} was already written")
        if problem is None:
            try:
                ext, data = image_member(record.load_image(), self.options["resize"], self.options["max_pixels"])
            except FileNotFoundError:
                problem = ("missing_file", "no such file in the image folder")
            except OSError as e:
                problem = ("unreadable_file", f"{type(e).__name__}: {e}")
            except ImageDecodeError as e:
                problem = (e.reason, e.detail)
        if problem is not None:
            self.report.skips.append(Skip(record.row, record.key, record.file, *problem))
            return
        encoded = encode_sample(record.key, sorted({**record.members, ext: data}.items()))
        self._make_room(encoded, record.row)
        self.current.write(encoded)
        self.seen.add(record.key)
        self.without_synthetic += not record.has_synthetic

    def _make_room(self, encoded: bytes, row: int) -> None:
        cur, max_count, max_size = self.current, self.options["max_count"], self.options["max_size"]
        if cur is not None and (
            (max_count is not None and cur.count >= max_count)
            or (max_size is not None and cur.size_with(encoded) > max_size)
        ):
            self._commit(end_row=row)
        if self.current is None:
            self.current = ShardFile(self.out / SHARD_NAME.format(len(self.report.shards)))

    def _commit(self, end_row: int) -> None:
        size, sha = self.current.commit()
        info = ShardInfo(self.current.path.name, self.current.count, size, sha, [self.next_row, end_row],
                         self.without_synthetic)
        self.report.shards.append(info)
        self.current, self.without_synthetic = None, 0
        self.save(complete=False)

    def finish(self, total_rows: int) -> None:
        """Commit the last shard, remove shards left by an older, longer run, mark the output complete."""
        if self.current is not None:
            self._commit(end_row=total_rows)
        for path in self.out.glob("shard-*.tar"):
            match = SHARD_RE.match(path.name)
            if match and int(match.group(1)) >= len(self.report.shards):
                path.unlink()
        self.save(complete=True)

    def abort(self) -> None:
        if self.current is not None:
            self.current.abort()

    def save(self, complete: bool) -> None:
        shards = [asdict(s) for s in self.report.shards]
        manifest = {**self.header, "complete": complete, "samples": self.report.written, "shards": shards}
        write_json_atomic(self.out / "manifest.json", manifest)
        write_json_atomic(self.out / "report.json", self.report.to_json(complete))


def write_shards(
    out_dir: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    captions: str | os.PathLike | None = None,
    from_shards: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    max_count: int | None = None,
    max_size: int | None = None,
    resize: int | None = None,
    source: str | None = None,
    image_column: str = "image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    progress: bool = True,
) -> Report:
    """Write ``out_dir/shard-*.tar`` from ``images`` + ``captions`` (a .csv/.tsv/.jsonl table) or ``from_shards``.

    A shard closes before the sample that would take it past ``max_count`` samples or ``max_size`` bytes (default:
    10,000 samples). ``resize`` scales the shorter side down to that many pixels. Resumes an interrupted run.
    """
    if (captions is None) == (from_shards is None):
        raise ValueError("give either images and captions, or from_shards")
    if max_count is None and max_size is None:
        max_count = DEFAULT_MAX_COUNT
    for name, value in (("max_count", max_count), ("max_size", max_size), ("resize", resize)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    out = Path(out_dir)
    plan = _plan_input(images, captions, from_shards, source, image_column)
    if any(Path(p).resolve().parent == out.resolve() for p in plan.description.get("shards", [])):
        raise ValueError(f"{out} is the input folder of the re-shard; write to another folder")
    out.mkdir(parents=True, exist_ok=True)
    options = {"max_count": max_count, "max_size": max_size, "resize": resize, "max_pixels": max_pixels,
               "image_column": image_column, "source": source, "jpeg_quality": JPEG_QUALITY}
    fingerprint = hashlib.sha256(dumps_json({"format": FORMAT, "input": plan.digest, "options": options})).hexdigest()
    finished, skips = _resume(out, fingerprint, overwrite)
    for stale in out.glob("shard-*.tar.tmp"):
        stale.unlink()
    report = Report(out, fingerprint, finished, skips, reused_shards=len(finished))
    header = {"format": FORMAT, "fingerprint": fingerprint, "input": plan.description, "options": options}
    run = _ShardRun(out, report, header, options)
    skipped_rows = {s.row for s in skips}
    start, total_rows = run.next_row, 0
    bar = tqdm(total=plan.total, initial=start, unit="row", desc="tips-shards", disable=not progress)
    try:
        for record in plan.records():
            total_rows = record.row + 1
            if record.row < start:  # done in an earlier run; only its key matters (duplicates)
                if record.row not in skipped_rows:
                    run.seen.add(record.key)
                continue
            run.add(record)
            bar.update(1)
        run.finish(total_rows)
    except BaseException:
        run.abort()
        raise
    finally:
        bar.close()
    return report


# ------------------------------------------------------------------------------------------------------------- CLI


def _parse_size(text: str) -> int:
    """Bytes from ``"500000"``, ``"500MB"``, ``"1.5GB"`` or ``"1GiB"``."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([kKmMgGtT]i?)?[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500000, 500MB, 1GiB)")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    base = 1024 if unit.endswith("I") else 1000
    return int(number * base ** (" KMGT".index(unit[:1]) if unit else 0))


EXAMPLES = """\
examples:
  # an image folder and a captions table (columns image, alt_text[, synthetic_caption]) into 10,000-image shards
  tips-shards -o shards --images photos/ --captions captions.csv --max-count 10000
  # re-shard existing shards (e.g. tips-scenes' pretraining shards) into shards of at most 100 MB
  tips-shards -o reshard --from-shards 'data/scenes/pretrain/shard-{000000..000003}.tar' --max-size 100MB
"""


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="tips-shards", description=__doc__.split("\n\n")[0].replace("``", ""),
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_arg(p, "output folder for shard-*.tar, manifest.json and report.json", required=True)
    p.add_argument("--images", type=Path, help="folder the table's image paths are relative to")
    p.add_argument("--captions", type=Path, help="captions table (.csv, .tsv or .jsonl): image, alt_text, "
                   "optional synthetic_caption / synthetic_captions (JSON list) and key")
    p.add_argument("--from-shards", help="re-shard existing shards: a folder, brace pattern or glob")
    p.add_argument("--max-count", type=int, help=f"samples per shard (default {DEFAULT_MAX_COUNT} if no --max-size)")
    p.add_argument("--max-size", type=_parse_size, help="bytes per shard, e.g. 1GB")
    p.add_argument("--resize", type=int, metavar="S", help="scale the shorter side down to S px (JPEG quality 95)")
    p.add_argument("--source", help="json 'source' value (default: the image folder's name)")
    p.add_argument("--image-column", default="image", help="table column holding the image path")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="decompression-bomb limit")
    p.add_argument("--force", action="store_true", help="replace shards made from another input or options")
    renamed(p, "--overwrite", "--force")
    p.add_argument("--fail-on-skip", action="store_true", help="exit with status 1 if any row was skipped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_arg(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``tips-shards``; 0 on success, 2 for a usage error, 1 with one line on stderr on failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.captions is None) == (args.from_shards is None) or (args.captions is not None and args.images is None):
        parser.error("give either --images and --captions, or --from-shards")
    return run_main(parser.prog, lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    report = write_shards(
        args.out, images=args.images, captions=args.captions, from_shards=args.from_shards,
        max_count=args.max_count, max_size=args.max_size, resize=args.resize, source=args.source,
        image_column=args.image_column, max_pixels=args.max_pixels, overwrite=args.force,
        progress=not args.no_progress,
    )
    print(f"{report.written} samples in {len(report.shards)} shards ({report.reused_shards} reused) in {args.out}; "
          f"{report.skipped} rows skipped {report.skipped_by_reason()} (see report.json)")
    if report.without_synthetic_captions:
        print(f"note: {report.without_synthetic_captions} samples have no synthetic caption; the training pipeline "
              "drops them until tips-caption adds one")
    if args.fail_on_skip and report.skipped:
        print("tips-shards: --fail-on-skip: rows were skipped", file=sys.stderr)
        return 1
    return 0
