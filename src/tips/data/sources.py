"""Where samples come from: webdataset shards or a CSV / JSONL table with an image folder.

Both kinds become a stream of :class:`Record` (captions validated, image still compressed or a path), either
as one pass over this rank's and worker's share of the units (shards or rows) or resampled with replacement.
Decoding happens later, after the shuffle buffer, so the buffer holds compressed bytes.
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import webdataset as wds
from PIL import Image

from ..io.images import Draft, ImageDecodeError
from ..io.images import decode_image as decode_stored_mode
from ..models.preprocess import to_rgb
from ..io.shards import expand_shards
from .skips import SkipCounter, SkipSample

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
# The largest tar member a sample may hold (bytes). A larger one is skipped from its header, before it is read
# (a 1 GiB member would otherwise be read whole, twice, before its image is refused).
MAX_MEMBER_BYTES = 256 << 20
TABLE_SUFFIXES = (".csv", ".jsonl")


@dataclass
class Record:
    """One sample before decoding. image: compressed bytes (shards) or a file path (tables)."""

    key: str
    image: bytes | str
    alt_text: str
    synthetic_captions: list[str]


@dataclass
class Source:
    """One data source: kind ``"shards"`` (units = shard urls) or ``"table"`` (units = row dicts)."""

    spec: str
    kind: str
    units: list[Any]
    weight: float = 1.0
    image_root: str = ""


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the non-negative integers ``parts``."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def is_table(spec: str) -> bool:
    return spec.lower().endswith(TABLE_SUFFIXES)


def read_table(path: str) -> list[dict[str, Any]]:
    """Rows of a CSV (header row) or JSONL file, each a dict of its columns."""
    with open(path, newline="", encoding="utf-8") as f:
        if path.lower().endswith(".csv"):
            return list(csv.DictReader(f))
        return [json.loads(line) for line in f if line.strip()]


def load_sources(specs: list[str], weights: list[float] | None, image_root: str | None = None) -> list[Source]:
    """Expand every source spec; weights default to 1 each."""
    if not specs:
        raise ValueError("DataConfig.sources is empty: give shard patterns or .csv / .jsonl tables")
    weights = list(weights) if weights is not None else [1.0] * len(specs)
    if len(weights) != len(specs) or any(w <= 0 for w in weights):
        raise ValueError(f"need one positive weight per source: {len(specs)} sources, weights {weights}")
    sources = []
    for spec, weight in zip(specs, weights):
        if is_table(spec):
            if not os.path.isfile(spec):
                raise FileNotFoundError(f"table {spec!r} does not exist")
            root = image_root if image_root is not None else str(Path(spec).parent)
            rows = read_table(spec)
            if not rows:
                raise ValueError(f"table {spec!r} has no rows")
            for i, row in enumerate(rows):
                row.setdefault("key", f"{Path(spec).stem}/{i:08d}")
            sources.append(Source(spec, "table", rows, float(weight), root))
        else:
            sources.append(Source(spec, "shards", expand_shards(spec, check_exists=True), float(weight)))
    return sources


def check_shard_counts(sources: list[Source], num_workers: int, world_size: int) -> None:
    """Without resampling every (rank, worker) needs at least one unit of every source, else it idles."""
    needed = max(1, num_workers) * world_size
    for source in sources:
        if len(source.units) < needed:
            unit = "shards" if source.kind == "shards" else "rows"
            raise ValueError(
                f"source {source.spec!r} has {len(source.units)} {unit} but resampled=False splits it over "
                f"{max(1, num_workers)} workers x {world_size} ranks = {needed}. Re-shard it into more, smaller "
                f"shards (tips-shards --max-count N), use fewer num_workers, or set resampled=True."
            )


# ---------------------------------------------------------------- records


def _text(value: bytes | str | None, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exn:
            raise SkipSample("bad_text", f"{what} is not UTF-8 ({exn})") from None
    return str(value)


def _captions(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [c.strip() for c in value if isinstance(c, str) and c.strip()]


def record_from_sample(sample: dict[str, Any]) -> Record:
    """A webdataset sample (``__key__``, image, ``txt``, ``json``) → Record; raises SkipSample."""
    key = sample.get("__key__", "?")
    too_large = next((v for v in sample.values() if isinstance(v, TooLarge)), None)
    if too_large is not None:
        raise SkipSample("too_large", f"{key}: {too_large}")
    image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if image is None:
        raise SkipSample("missing_image", key)
    alt_text = _text(sample.get("txt"), f"{key}.txt").strip()
    if not alt_text:
        raise SkipSample("missing_alt_text", key)
    try:
        meta = json.loads(_text(sample.get("json"), f"{key}.json") or "{}")
    except json.JSONDecodeError as exn:
        raise SkipSample("bad_text", f"{key}.json: {exn}") from None
    captions = _captions(meta.get("synthetic_captions") if isinstance(meta, dict) else None)
    if not captions:
        raise SkipSample("no_synthetic_caption", key)
    return Record(key, image, alt_text, captions)


def record_from_row(row: dict[str, Any], image_root: str) -> Record:
    """A table row (``image``, ``alt_text``, ``synthetic_captions`` list / JSON list or ``synthetic_caption``)."""
    key = str(row["key"])
    if not row.get("image"):
        raise SkipSample("missing_image", key)
    alt_text = str(row.get("alt_text") or "").strip()
    if not alt_text:
        raise SkipSample("missing_alt_text", key)
    captions = row.get("synthetic_captions", row.get("synthetic_caption"))
    if isinstance(captions, str) and captions.lstrip().startswith("["):
        try:
            captions = json.loads(captions)
        except json.JSONDecodeError as exn:
            raise SkipSample("bad_text", f"{key} synthetic_captions: {exn}") from None
    captions = _captions(captions)
    if not captions:
        raise SkipSample("no_synthetic_caption", key)
    return Record(key, os.path.join(image_root, str(row["image"])), alt_text, captions)


def _records(samples: Iterable[dict[str, Any]], source: Source, skips: SkipCounter) -> Iterator[Record]:
    """Validate samples (or rows) into Records, counting the ones dropped."""
    for sample in samples:
        try:
            if source.kind == "table":
                yield record_from_row(sample, source.image_root)
            else:
                yield record_from_sample(sample)
        except SkipSample as skip:
            skips.add(skip.reason, str(skip))


def decode_image(image: bytes | str, max_pixels: int, draft: Draft | None = None) -> Image.Image:
    """Compressed bytes or a path → 8-bit RGB PIL image (``tips.io.decode_image``, then ``tips.models.to_rgb``);
    raises SkipSample with the decoder's reason (``bad_image``, ``too_large``: checked from the header) or ``missing_image``."""
    try:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
    except OSError as exn:
        raise SkipSample("missing_image", str(exn)) from None
    try:
        return to_rgb(decode_stored_mode(data, max_pixels=max_pixels, draft=draft), in_place=True)
    except ImageDecodeError as exn:
        raise SkipSample(exn.reason, exn.detail) from None


# ---------------------------------------------------------------- streams


def split_by_rank(items: Iterable[Any], rank: int, world_size: int) -> Iterator[Any]:
    """Every world_size-th unit starting at rank (webdataset's split_by_node, with an explicit rank)."""
    return islice(items, rank, None, world_size)


def pass_records(
    source: Source, order_seed: int, rank: int, world_size: int, skips: SkipCounter
) -> Iterator[Record]:
    """One pass over this rank's and this worker's units, in an order shuffled by ``order_seed`` (the same on
    every rank and worker, so the split is a partition)."""
    if source.kind == "shards":
        units: Iterable[Any] = wds.SimpleShardList(source.units, seed=order_seed)
    else:
        rows = list(source.units)
        random.Random(order_seed).shuffle(rows)
        units = rows
    mine = wds.split_by_worker(split_by_rank(units, rank, world_size))
    if source.kind == "shards":
        mine = tar_samples(mine, skips)
    return _records(mine, source, skips)


def resampled_records(source: Source, seed: int, skips: SkipCounter) -> Iterator[Record]:
    """An endless stream: shards (or rows) drawn with replacement by a generator seeded with ``seed``."""
    if source.kind == "shards":
        shards = wds.ResampledShards(source.units, seed=seed, worker_seed=lambda: 0, deterministic=True)
        samples: Iterable[dict[str, Any]] = tar_samples(iter(shards), skips)
    else:
        rng = np.random.default_rng(seed)
        samples = (source.units[int(i)] for i in _endless_integers(rng, len(source.units)))
    return _records(samples, source, skips)


@dataclass(frozen=True)
class TooLarge:
    """Stands in a sample for a tar member that was not read: larger than the bound."""

    name: str
    size: int
    limit: int

    def __str__(self) -> str:
        return f"member {self.name} has {self.size} bytes, more than {self.limit} (not read)"


def tar_samples(urls: Iterable[dict[str, Any]], skips: SkipCounter,
                max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[dict[str, Any]]:
    """webdataset's ``tarfile_to_samples`` with a bound: a member larger than ``max_member_bytes`` is not read
    (its header says the size; the streaming reader passes over its bytes in small blocks) and its sample is
    dropped as ``too_large``."""
    from webdataset.tariterators import group_by_keys, url_opener

    return group_by_keys(_bounded_members(url_opener(urls, handler=skips), skips, max_member_bytes), handler=skips)


def _bounded_members(streams: Iterable[dict[str, Any]], skips: SkipCounter,
                     max_member_bytes: int) -> Iterator[dict[str, Any]]:
    """(fname, data, __url__) of every regular member within the bound; ``{}`` at the end of each shard."""
    import tarfile

    for source in streams:
        url = source["url"]
        try:
            with tarfile.open(fileobj=source["stream"], mode="r|*") as tar:
                for info in tar:
                    if not info.isreg() or info.name.startswith("__") or "/__" in info.name:
                        continue
                    if info.size > max_member_bytes:  # its sample is dropped once, by record_from_sample
                        yield {"fname": info.name, "data": TooLarge(info.name, info.size, max_member_bytes),
                               "__url__": url}
                        continue
                    yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": url}
                    tar.members = []  # streaming: keep no history of members
        except Exception as exn:  # noqa: BLE001 - a damaged shard is counted and the next one read
            if not skips(exn):
                raise
        finally:
            stream = source.get("stream")
            if stream is not None and hasattr(stream, "close"):
                stream.close()
        yield {}


def _endless_integers(rng: np.random.Generator, high: int, chunk: int = 1024) -> Iterator[int]:
    while True:
        yield from rng.integers(0, high, size=chunk).tolist()


def weighted_mix(streams: list[Iterator[Record]], weights: list[float], rng: np.random.Generator) -> Iterator[Record]:
    """Each next record comes from stream i with probability weights[i] / sum(weights) (seeded by ``rng``)."""
    if len(streams) == 1:
        yield from streams[0]
        return
    p = np.asarray(weights, dtype=np.float64)
    cumulative = np.cumsum(p / p.sum())
    while True:
        draws = rng.random(1024)
        for i in np.searchsorted(cumulative, draws, side="right").tolist():
            try:
                yield next(streams[min(i, len(streams) - 1)])
            except StopIteration:
                return
