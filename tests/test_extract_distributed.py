"""tips-extract on several processes: torchrun and accelerate launches share the chunks, each image is encoded once,
the union equals a one-process run, a killed run finishes on any number of processes; the npy/parquet layout and the
region vectors."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tips.cli.extract import main as extract_main
from tips.inference.extract import load_features

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--random-init", "tiny", "--resolution", "28", "--num-workers", "0", "--no-progress", "--shard-size", "8",
         "--batch-size", "4"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[str]:
    """32 generated photos in a folder (4 chunks of 8) and a webdataset shard of 5 samples, one of them corrupt."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    for i in range(32):
        Image.fromarray(rng.integers(0, 255, (40 + i, 48, 3), dtype=np.uint8)).save(root / "photos" / f"p{i:02d}.png")
    with tarfile.open(root / "shard-000.tar", "w") as tar:
        for i in range(5):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(buf, format="PNG")
            data = buf.getvalue() if i != 2 else b"not a png at all"
            info = tarfile.TarInfo(f"s{i:03d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return [str(root / "photos"), str(root / "shard-000.tar")]


@pytest.fixture(scope="module")
def one_process(sources, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    assert extract_main([*sources, "-o", str(out), *FLAGS, "--regions", "2"]) == 0
    return out


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def tips_extract() -> list[str]:
    return ["--no-python", "tips-extract"]


def assert_same_extraction(out: Path, reference: Path) -> None:
    got, ref = load_features(out), load_features(reference)
    assert got.ids == ref.ids and len(set(got.ids)) == len(got.ids) == 36  # 32 + 4 readable shard samples
    scale = ref.cls_alt.abs().max()
    assert (got.cls_alt - ref.cls_alt).abs().max() <= 1e-5 * scale
    assert (got.cls_syn - ref.cls_syn).abs().max() <= 1e-5 * ref.cls_syn.abs().max()
    assert json.loads((out / "skipped.json").read_text())[0]["id"] == "s002"


def encoded_once(out: Path) -> None:
    """The chunks' done markers list disjoint ids whose union is the folder's rows."""
    ids = [i for m in sorted(out.glob("chunk-*.done.json")) for i in json.loads(m.read_text())["ids"]]
    assert len(ids) == len(set(ids)) == len(load_features(out).ids)


def test_two_torchrun_processes_share_the_chunks_and_equal_one_process(sources, one_process, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_port", "0", *tips_extract(), *sources,
                           "-o", str(out), *FLAGS, "--regions", "2"], env=env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_extraction(out, one_process)
    encoded_once(out)
    markers = [json.loads(m.read_text()) for m in sorted(out.glob("chunk-*.done.json"))]
    assert len(markers) == 5  # four chunks of files and the shard, whatever the number of processes
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == 36
    # the npy/parquet layout, read by the tools index users have
    import pyarrow.parquet as pq

    vectors = np.concatenate([np.load(out / "img_emb" / f"img_emb_{i}.npy", allow_pickle=False) for i in range(5)])
    rows = sum(pq.read_table(out / "metadata" / f"metadata_{i}.parquet").num_rows for i in range(5))
    assert vectors.shape == (36, 192) and rows == manifest["rows"]
    np.testing.assert_allclose(vectors, load_features(out).cls_alt.numpy(), atol=1e-6)
    regions = np.concatenate([np.load(out / "region_emb" / f"region_emb_{i}.npy", allow_pickle=False) for i in range(5)])
    assert regions.shape == (36 * 4, 192)


def test_region_vectors_of_an_extraction_equal_an_independent_computation(one_process, sources):
    import pyarrow.parquet as pq

    from tips.inference.loaded import build_model
    from tips.inference.regions import value_readout
    from tips.models.preprocess import Preprocess

    model = build_model(None, "tiny", None, None, 0).model.eval()
    vectors = np.load(one_process / "region_emb" / "region_emb_0.npy", allow_pickle=False)
    rows = pq.read_table(one_process / "region_metadata" / "region_metadata_0.parquet").to_pydict()
    assert len(set(rows["id"][:4])) == 1 and rows["id"][0].endswith("p00.png") and rows["cell"][:4] == [0, 1, 2, 3]
    assert rows["source"][0] == str(Path(sources[0]) / "p00.png")
    image = Preprocess(28, 14)(Image.open(Path(sources[0]) / "p00.png").convert("RGB"))[None]
    with torch.no_grad():
        patches = value_readout(model, image)[0].double().numpy()  # (2, 2, D): one patch per cell at 28 px
    for cell in range(4):
        mean = patches[cell // 2, cell % 2]
        np.testing.assert_allclose(vectors[cell], mean / np.linalg.norm(mean), atol=1e-5)
        assert [rows[k][cell] for k in ("x0", "y0", "x1", "y1")] == [cell % 2 / 2, cell // 2 / 2, cell % 2 / 2 + 0.5,
                                                                      cell // 2 / 2 + 0.5]


@pytest.mark.slow
def test_a_sigkilled_two_process_run_finishes_on_one_process_with_every_image_once(sources, one_process, tmp_path):
    out = tmp_path / "out"
    flags = [f if f != "8" else "2" for f in FLAGS]  # chunks of 2 files: many markers to stop between
    launch = subprocess.Popen(["torchrun", "--nproc_per_node", "2", "--master_port", "0", *tips_extract(), *sources,
                               "-o", str(out), *flags, "--regions", "2"], env=env(), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(out.glob("chunk-*.done.json")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(launch.pid, signal.SIGKILL)
    launch.wait()
    done = len(list(out.glob("chunk-*.done.json")))
    assert 0 < done < 17 and not json.loads((out / "manifest.json").read_text())["complete"]
    assert extract_main([*sources, "-o", str(out), *flags, "--regions", "2"]) == 0
    assert_same_extraction(out, one_process)
    encoded_once(out)


@pytest.mark.slow
def test_two_accelerate_processes_share_the_chunks(sources, one_process, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", "0", "-m", "tips.cli.extract", *sources, "-o", str(out), *FLAGS,
                           "--regions", "2"], env={**env(), "ACCELERATE_USE_CPU": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_extraction(out, one_process)
    encoded_once(out)


def test_tips_index_reads_the_region_layout_and_a_region_finds_its_own_cell(one_process, tmp_path):
    from tips.cli.index import main as index_main
    from tips.index import Index
    from tips.index.queries import model_space
    from tips.inference.loaded import build_model

    assert index_main([str(one_process), "-o", str(tmp_path / "regions"), "--kind", "region"]) == 0
    index = Index.open(tmp_path / "regions")
    assert len(index) == 36 * 4 and index.space.kind == "region"
    assert index.info["factory"] != "Flat"  # region indexes are quantised by default (K² vectors per image)
    vectors = np.load(one_process / "region_emb" / "region_emb_1.npy", allow_pickle=False)
    loaded = build_model(None, "tiny", None, None, 0)
    hit = index.search(vectors[5:6], 1, model_space(loaded.model, loaded.name, "region")).rows[0][0]
    assert hit["id"].endswith("p09.png") and hit["cell"] == 1  # chunk 1 starts at p08: row 5 = p09, cell 1
