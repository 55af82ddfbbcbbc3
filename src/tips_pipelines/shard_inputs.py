"""Inputs of ``tips-shards``: rows of a captions table (CSV/TSV/JSONL) or samples of existing shards → :class:`Record`.

A record carries its non-image members ready to write, or the reason (``problem``) it must be skipped; the image
is read lazily by the writer, which verifies it.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .tario import IMAGE_EXTENSIONS, ShardReadError, TarSample, dumps_json, iter_tar_samples

CAPTION_COLUMNS = ("alt_text", "synthetic_caption", "synthetic_captions", "key")

@dataclass
class Record:
    """One input row before its image is read: the non-image members are ready, or ``problem`` says why not."""

    row: int
    key: str | None
    file: str | None
    problem: tuple[str, str] | None = None
    members: dict[str, bytes] = field(default_factory=dict)
    load_image: Callable[[], bytes] | None = None
    has_synthetic: bool = False


# ------------------------------------------------------------------------------------------------ captions tables


def table_rows(table: Path, required: Sequence[str]) -> Iterator[tuple[int, dict | None, tuple[str, str] | None]]:
    """(row, values, problem) for each data row of a .csv/.tsv/.jsonl table; a missing column is an error."""
    suffix = table.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_rows(table, required)
    elif suffix in (".csv", ".tsv"):
        yield from _csv_rows(table, required, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise ValueError(f"{table}: unknown captions table format {suffix!r} (use .csv, .tsv or .jsonl)")


def _csv_rows(table: Path, required: Sequence[str], delimiter: str) -> Iterator[tuple[int, dict, None]]:
    # surrogateescape keeps a row with stray bytes readable; _text_problem then names the column and skips the row
    with open(table, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            raise ValueError(f"{table}: empty file; expected a header row with columns {list(required)}")
        reader.fieldnames = [c.strip() for c in reader.fieldnames]
        missing = [c for c in required if c not in reader.fieldnames]
        if missing:
            raise ValueError(f"{table}: missing column(s) {missing}; columns found: {reader.fieldnames}")
        for row, values in enumerate(reader):
            values.pop(None, None)  # cells beyond the header
            yield row, values, None


def _jsonl_rows(table: Path, required: Sequence[str]) -> Iterator[tuple[int, dict | None, tuple[str, str] | None]]:
    checked = False
    row = -1
    with open(table, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            row += 1
            try:
                values = json.loads(raw.decode("utf-8", errors="surrogateescape"))
            except ValueError as e:
                yield row, None, ("bad_json", f"line {line_no}: {e}")
                continue
            if not isinstance(values, dict):
                yield row, None, ("bad_json", f"line {line_no}: not a JSON object")
                continue
            missing = [c for c in required if c not in values]
            if missing and not checked:
                raise ValueError(f"{table}, line {line_no}: missing field(s) {missing}; fields found: {list(values)}")
            checked = True
            yield row, values, ("missing_field", f"line {line_no}: no field(s) {missing}") if missing else None


def _text_problem(values: dict) -> tuple[str, str] | None:
    """A column holding bytes that are not UTF-8 (decoded as lone surrogates)."""
    for name, value in values.items():
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return "not_utf8", f"column {name!r} is not valid UTF-8"
    return None


def _key_problem(key: str) -> tuple[str, str] | None:
    # webdataset cuts the key at the first dot of a member's file name
    if not key or "." in key or key.startswith("/") or key.endswith("/") or key != key.strip():
        return "bad_key", f"key {key!r} is empty, has a dot, surrounding spaces or a leading/trailing '/'"
    return None


def _path_problem(rel: Any, column: str) -> tuple[str, str] | None:
    if not isinstance(rel, str) or not rel.strip():
        return "missing_image_path", f"column {column!r} is empty"
    if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == "..":
        return "unsafe_path", f"{rel!r} points outside the image folder"
    return None


def _synthetic_captions(values: dict) -> list[str]:
    """``synthetic_captions`` (a JSON list) and/or ``synthetic_caption`` (one string); raises ValueError."""
    many = values.get("synthetic_captions")
    if isinstance(many, str):
        try:
            many = json.loads(many) if many.strip() else None
        except ValueError as e:
            raise ValueError(f"column 'synthetic_captions' is not a JSON list: {e}") from e
    if many is not None and not (isinstance(many, list) and all(isinstance(c, str) for c in many)):
        raise ValueError("'synthetic_captions' must be a JSON list of strings")
    one = values.get("synthetic_caption")
    if one is not None and not isinstance(one, str):
        raise ValueError("'synthetic_caption' must be a string")
    captions = (many or []) + ([one] if one else [])
    return [c.strip() for c in captions if c.strip()]


def _table_record(row: int, values: dict, folder: Path, image_column: str, source: str) -> Record:
    key = str(values.get("key") or "").strip() or f"{row:09d}"
    rel = values.get(image_column)
    record = Record(row, key, rel.strip() if isinstance(rel, str) else None)
    record.problem = _text_problem(values) or _key_problem(key) or _path_problem(rel, image_column)
    alt = values.get("alt_text")
    if record.problem is None and not (isinstance(alt, str) and alt.strip()):
        record.problem = ("no_alt_text", "column 'alt_text' is missing or empty")
    if record.problem is not None:
        return record
    try:
        captions = _synthetic_captions(values)
    except ValueError as e:
        record.problem = ("bad_synthetic_captions", str(e))
        return record
    extra = {k: v for k, v in values.items() if k not in (image_column, *CAPTION_COLUMNS) and v not in (None, "")}
    meta = {**extra, "synthetic_captions": captions, "source": source, "image": record.file}
    record.members = {"json": dumps_json(meta), "txt": alt.strip().encode("utf-8")}
    record.load_image = (folder / record.file).read_bytes
    record.has_synthetic = bool(captions)
    return record


def table_records(table: Path, folder: Path, image_column: str, source: str) -> Iterator[Record]:
    """Records of a captions table whose image paths are relative to ``folder``."""
    for row, values, problem in table_rows(table, (image_column, "alt_text")):
        if values is None or problem is not None:
            yield Record(row, None, None, problem)
        else:
            yield _table_record(row, values, folder, image_column, source)


# ------------------------------------------------------------------------------------------------ existing shards


def _sample_record(row: int, shard: Path, sample: TarSample, source: str) -> Record:
    record = Record(row, sample.key, f"{shard.name}:{sample.key}", _key_problem(sample.key))
    members = dict(sample.members)
    ext = sample.image_ext()
    if ext is None:
        record.problem = record.problem or ("no_image", f"no {'/'.join(IMAGE_EXTENSIONS)} member in {list(members)}")
        return record
    image = members.pop(ext)
    try:
        alt = members.get("txt", b"").decode("utf-8")
        meta = json.loads(members["json"]) if "json" in members else {"source": source}
        captions = meta.get("synthetic_captions", []) if isinstance(meta, dict) else None
    except UnicodeDecodeError:
        alt, captions = "", None
        record.problem = record.problem or ("not_utf8", "member 'txt' is not valid UTF-8")
    except ValueError as e:
        alt, captions = "", None
        record.problem = record.problem or ("bad_json", f"member 'json': {e}")
    if record.problem is None and not alt.strip():
        record.problem = ("no_alt_text", "member 'txt' is missing or empty")
    if record.problem is None and not (isinstance(captions, list) and all(isinstance(c, str) for c in captions)):
        record.problem = ("bad_synthetic_captions", "member 'json' needs an object with a list of strings")
    if record.problem is not None:
        return record
    if "json" not in members or "synthetic_captions" not in meta:  # otherwise the json bytes stay as they were
        members["json"] = dumps_json({**meta, "synthetic_captions": captions})
    record.members, record.has_synthetic = members, bool(captions)
    record.load_image = lambda: image
    return record


def shard_records(paths: Sequence[Path], source: str) -> Iterator[Record]:
    """Records of existing shards, in order; a damaged tar ends its shard with one skipped record."""
    row = 0
    for path in paths:
        samples = iter_tar_samples(path)
        while True:
            try:
                sample = next(samples)
            except StopIteration:
                break
            except ShardReadError as e:
                yield Record(row, None, path.name, ("unreadable_shard", str(e)))
                row += 1
                break
            yield _sample_record(row, path, sample, source)
            row += 1
