"""Probe results side by side: every finished ``tips-probe`` run appends one line to ``results.jsonl`` in its
results folder, and ``tips-probe compare`` prints one table of them, a row per model, a column per task/metric.

    tips-probe compare results/random results/trained            # folders: their results.jsonl (or result JSONs)
    tips-probe compare results/*/results.jsonl --format csv > all.csv
    tips-probe compare results --metric 'segmentation/*' --metric 'retrieval/*R@1'   # '*': every metric

A line is ``{"time", "task", "dataset", "protocol", "model": {"label", "id"}, "metrics": {name: number}, "file"}``;
``metrics`` holds the run's scalar metrics, nested names joined by dots (``all.rmse``), without counts and
per-class lists. A model is its label and the 8-digit tag of its identity (the one in the dense result names):
two checkpoints with one label get one row each. When one (model, column) was measured more than once the last
line read wins.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import fnmatch
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from tips.cli.errors import CliParser, add_debug_arg
from tips.io import append_line

LOG_NAME = "results.jsonl"
FORMATS = ("markdown", "csv")
# the columns shown unless --metric names others ('*' shows every metric): one or two numbers per task
HEADLINE = ("segmentation/miou", "depth/all.rmse", "depth/all.d1", "depth/objects.rmse", "normals/all.mean",
            "normals/all.pct_11.25", "zero-shot/top1", "knn/top1", "retrieval/*.R@1", "zero-shot-seg/miou",
            "compression/*")
# leaves that count or list things, not measures of the features; per_* are breakdowns (per class, per image)
_SKIPPED = ("num_*", "images*", "classes_counted", "per_*", "confusion*", "examples", "subset", "eigen_crop")


def headline_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a result's ``metrics`` as ``{"a.b": value}`` (counts, per-class tables and lists
    left out; NaN kept as None)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if any(fnmatch.fnmatchcase(str(key), pattern) for pattern in _SKIPPED):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(headline_metrics(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            finite = not isinstance(value, float) or math.isfinite(value)
            out[name] = value if finite else None  # type: ignore[assignment]
    return out


def log_records(out_dir: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Append finished runs to ``out_dir/results.jsonl``, each one ``O_APPEND`` write of one line."""
    path = Path(out_dir) / LOG_NAME
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    for record in records:
        append_line(path, json.dumps({**record, "time": record.get("time") or now}, sort_keys=True, allow_nan=False))
    return path


# ----------------------------------------------------------------------------- reading
def read_records(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Records from ``results.jsonl`` files, result JSONs, or folders (their ``results.jsonl``, else every result
    JSON in them). Raises FileNotFoundError / ValueError naming the file."""
    records: list[dict[str, Any]] = []
    for path in map(Path, paths):
        if path.is_dir():
            log = path / LOG_NAME
            if log.is_file():
                records += _read_log(log)
            else:
                found = [r for p in sorted(path.glob("*.json")) for r in _from_result_json(p, quiet=True)]
                if not found:
                    raise FileNotFoundError(f"{path}: no {LOG_NAME} and no probe result JSON in this folder")
                records += found
        elif path.suffix == ".jsonl":
            records += _read_log(path)
        elif path.is_file():
            records += _from_result_json(path)
        else:
            raise FileNotFoundError(f"{path} does not exist: give results folders, {LOG_NAME} files or result JSONs")
    return records


def _read_log(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and "task" in record and isinstance(record.get("metrics"), dict)
                and isinstance(record.get("model"), dict) and "label" in record["model"]):
            raise ValueError(f"{path}:{number}: not a {LOG_NAME} line (expected JSON with task, model.label and "
                             "metrics)")
        records.append(record)
    return records


def _from_result_json(path: Path, quiet: bool = False) -> list[dict[str, Any]]:
    """A dense probe's ``{task}-...json`` or a global task's ``{task}.json`` as records (none if ``quiet`` and it is
    not a result)."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        if quiet:
            return []
        raise ValueError(f"{path}: not JSON") from None
    if isinstance(result, dict) and "task" in result and isinstance(result.get("checkpoint"), dict):  # dense
        return [dense_record(result, path)]
    protocol = result.get("protocol") if isinstance(result, dict) else None
    if isinstance(protocol, dict) and "task" in protocol:
        return global_records(result, path)
    if quiet:
        return []
    raise ValueError(f"{path}: not a tips-probe result (no task and checkpoint)")


def dense_record(result: dict[str, Any], file: str | Path | None = None) -> dict[str, Any]:
    """The results.jsonl record of a dense probe's result dict."""
    from .report import identity_tag

    checkpoint = dict(result["checkpoint"])
    label = checkpoint.pop("label", "model")
    tag = result["protocol"] if not result.get("head_paths") else f"{result['protocol']}-dpt"
    return {"time": result.get("time"), "task": result["task"], "dataset": result["dataset"]["name"], "protocol": tag,
            "model": {"label": label, "id": identity_tag(checkpoint)}, "metrics": headline_metrics(result["metrics"]),
            "file": None if file is None else str(file)}


def global_records(result: dict[str, Any], file: str | Path | None = None) -> list[dict[str, Any]]:
    """The results.jsonl records of a global task's result dict (one per dataset for zero-shot-seg)."""
    protocol = result["protocol"]
    model = protocol.get("model") or _model_of_record(protocol.get("checkpoint") or {})
    base = {"time": None, "task": protocol["task"], "protocol": protocol.get("cls", ""), "model": model,
            "file": None if file is None else str(file)}
    if "runs" in result:  # zero-shot-seg: one line per benchmark
        return [{**base, "dataset": run["dataset"], "metrics": headline_metrics(run["metrics"])}
                for run in result["runs"]]
    if "rows" in result:  # compression: metric at each precision and width
        metrics = {}
        for row in result["rows"]:
            measured = headline_metrics({k: v for k, v in row.items() if k not in ("precision", "width")})
            metrics.update({f"{row['precision']}.d{row['width']}.{k}": v for k, v in measured.items()})
        return [{**base, "dataset": "", "metrics": metrics}]
    return [{**base, "dataset": _dataset_name(protocol.get("dataset")), "metrics": headline_metrics(result["metrics"])}]


def _dataset_name(dataset: Any) -> str:
    if isinstance(dataset, dict):  # knn: train and val folders
        return "/".join(Path(str(v)).name for v in dataset.values())
    path = Path(str(dataset or ""))
    return path.parent.name if path.name == "captions.jsonl" else path.name


def _model_of_record(record: dict[str, Any]) -> dict[str, str]:
    """Label and identity tag of a result written before results carried them, from its checkpoint record."""
    from .features import model_identity
    from .report import identity_tag

    identity, label = model_identity(record.get("source"), record.get("random_init"), record.get("seed", 0),
                                     record.get("quantize"), record.get("dtype", "float32"))
    return {"label": label, "id": identity_tag(identity)}


# ----------------------------------------------------------------------------- the table
def compare_table(records: Iterable[dict[str, Any]], fmt: str = "markdown",
                  metrics: Sequence[str] = HEADLINE) -> str:
    """One table: a row per model (label, with its identity tag where two models share a label), a column per
    ``task/metric`` (``task@dataset/metric`` where a task was run on several datasets), the last value read winning.
    ``metrics``: glob patterns that ``task/metric`` must match (any of them); ``("*",)`` keeps every metric."""
    records = list(records)
    datasets: dict[str, set[str]] = {}
    for r in records:
        datasets.setdefault(r["task"], set()).add(r.get("dataset") or "")
    ids: dict[str, set[str]] = {}
    for r in records:
        ids.setdefault(r["model"]["label"], set()).add(r["model"].get("id") or "")
    cells: dict[str, dict[str, Any]] = {}
    columns: list[str] = []
    for r in records:
        label, tag = r["model"]["label"], r["model"].get("id") or ""
        row = f"{label} ({tag})" if len(ids[label]) > 1 and tag else label
        task = r["task"] if len(datasets[r["task"]]) == 1 else f"{r['task']}@{r.get('dataset')}"
        for name, value in r["metrics"].items():
            column = f"{task}/{name}"
            if not any(fnmatch.fnmatchcase(f"{r['task']}/{name}", p) for p in metrics):
                continue
            if column not in columns:
                columns.append(column)
            cells.setdefault(row, {})[column] = value
    if not columns:
        raise ValueError(f"no metric of these results matches {' '.join(metrics)} (--metric '*' shows them all)")
    rows = list(cells)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["model", *columns])
        for row in rows:
            writer.writerow([row, *("" if cells[row].get(c) is None else cells[row][c] for c in columns)])
        return buffer.getvalue()
    if fmt != "markdown":
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")

    def cell(value: Any) -> str:
        return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {row} | " + " | ".join(cell(cells[row].get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="tips-probe compare", description=__doc__.split("\n\n")[0],
                  epilog="examples:\n  tips-probe compare results/random results/trained\n"
                         "  tips-probe compare results --format csv --metric 'depth/*rmse'\n",
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", default=["results"], metavar="PATH",
                   help=f"results folders ({LOG_NAME}, else their result JSONs), {LOG_NAME} files or result JSONs "
                        "(default: results)")
    p.add_argument("--format", choices=FORMATS, default="markdown", help="markdown (default) or csv")
    p.add_argument("--metric", action="append", default=None, metavar="GLOB",
                   help="the TASK/METRIC columns matching this pattern, e.g. 'depth/all.*' or '*' for every metric "
                        f"(repeatable; default: {' '.join(HEADLINE)})")
    add_debug_arg(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(compare_table(read_records(args.paths), args.format, args.metric or HEADLINE), end="")
    return 0
