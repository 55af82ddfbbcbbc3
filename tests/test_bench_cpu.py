"""The CPU benchmarks run end to end on a tiny model and print every path with its ratios (no timing is checked:
a benchmark that no longer runs, or drops a peer, fails here)."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("transformers")


def table_rows(text: str, key: int) -> dict[str, list[str]]:
    """The data rows of a printed markdown table, by their column ``key`` (header and rule rows left out)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not re.fullmatch(r"[-| ]+", line)]
    return {cells[key]: cells for cells in rows[1:]}


def test_bench_extract_prints_every_path_against_transformers_and_the_official_encoder(capsys):
    from bench.extract import main

    main(["--variant", "tiny", "--sizes", "56", "--batch", "1", "--iters", "1", "--warmup", "0",
          "--paths", "fp32,fp32-eager,int8,int8-fbgemm,transformers,official"])
    rows = table_rows(capsys.readouterr().out, key=2)
    for path in ("fp32", "fp32-eager", "int8", "int8-fbgemm", "transformers", "official"):
        cells = rows[path]  # input, batch, path, img/s, × fp32, × transformers, × official, cosine
        assert float(cells[3]) > 0 and float(cells[5]) > 0 and float(cells[6]) > 0
        assert float(cells[7]) > (0.9999 if not path.startswith("int8") else 0.99)


def test_bench_predict_prints_ours_int8_transformers_and_the_official_decoder(capsys):
    from bench.predict import main

    assert main(["--width", "64", "--size", "56", "--batch", "1", "--iters", "1"]) == 0
    rows = table_rows(capsys.readouterr().out, key=0)
    assert {"ours", "ours-eager", "ours-int8", "transformers", "plain"} <= set(rows)
    assert float(rows["ours"][4]) < 1e-4 and float(rows["ours-int8"][2]) > 0  # fp32 equals the official decoder
