"""Probe results side by side (issue 41): results.jsonl grows by one whole line per run; tips-probe compare reads
it, result JSONs or folders into one table."""

from __future__ import annotations

import csv
import io
import json
import os
import threading

import pytest

from tips.io import append_line
from tips_eval.compare import compare_table, dense_record, headline_metrics, log_records, read_records


def test_append_line_is_one_append_write_and_lines_never_interleave(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    writes, real_write = [], os.write
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(data) or real_write(fd, data))
    append_line(path, json.dumps({"a": 1}))
    assert writes == [b'{"a": 1}\n']
    with pytest.raises(ValueError, match="one line expected"):
        append_line(path, "two\nlines")
    monkeypatch.setattr(os, "write", real_write)

    def worker(i: int) -> None:
        for j in range(50):
            append_line(path, json.dumps({"worker": i, "n": j, "pad": "x" * 3000}))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 6 * 50 and all(json.loads(line) for line in lines)  # every line whole


def _dense(label: str, variant: str, dataset: str, miou: float) -> dict:
    return {"task": "segmentation", "protocol": "fast", "time": "2026-01-01T00:00:00+00:00",
            "checkpoint": {"kind": "random-init", "variant": variant, "seed": 0, "label": label},
            "dataset": {"name": dataset}, "metrics": {"miou": miou, "per_class_iou": {"sky": 0.5}, "num_images": 3}}


def test_compare_names_rows_by_model_and_columns_by_task_and_metric(tmp_path, capsys):
    log_records(tmp_path, [dense_record(_dense("a", "tiny", "scenes", 0.25)),
                           dense_record(_dense("b", "s14", "scenes", 0.5)),
                           dense_record(_dense("a", "tiny", "scenes", 0.75))])  # a rerun: the last value wins
    records = read_records([tmp_path])
    assert records[0]["metrics"] == {"miou": 0.25}  # counts and per-class tables stay out
    table = compare_table(records)
    assert table.splitlines() == ["| model | segmentation/miou |", "|---|---|", "| a | 0.75 |", "| b | 0.5 |"]
    log_records(tmp_path, [dense_record(_dense("b", "s14", "voc", 0.125))])  # two datasets: the column names it
    rows = list(csv.reader(io.StringIO(compare_table(read_records([tmp_path / "results.jsonl"]), "csv"))))
    assert rows == [["model", "segmentation@scenes/miou", "segmentation@voc/miou"], ["a", "0.75", ""],
                    ["b", "0.5", "0.125"]]
    with pytest.raises(ValueError, match="no metric of these results matches depth/"):
        compare_table(records, metrics=("depth/*",))


def test_compare_refuses_what_it_cannot_read_naming_the_file(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"task": "knn"}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:1: not a results.jsonl line"):
        read_records([tmp_path])
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        read_records([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no results.jsonl and no probe result JSON"):
        read_records([tmp_path / "empty"])


def test_breakdowns_per_class_and_per_image_are_not_metrics():
    metrics = {"objects": {"rmse": 2.1, "images": 64, "per_image_rmse": {"val-000000": 1.9, "val-000001": 2.3}},
               "per_class_iou": {"sky": 0.9}}
    assert headline_metrics(metrics) == {"objects.rmse": 2.1}
