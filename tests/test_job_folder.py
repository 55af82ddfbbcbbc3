"""One job per extraction folder: a second job is refused naming both (or replaces the folder with --force,
leaving no stale file), a killed job is reported as incomplete and resumes, and probe results of two checkpoints
never share a file."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tips.cli.extract import main as extract_main
from importlib import import_module

extract_module = import_module("tips.inference.extract")
from tips.inference.extract import ExtractOptions, extract, load_features
from tips.inference.job_folder import FolderOwnedError, IncompleteExtraction
from tips.inference.loaded import build_model


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def opts(**kw) -> ExtractOptions:
    return ExtractOptions(resolution=28, progress=False, batch_size=16, **kw)


def model(seed: int):
    return build_model(random_init="tiny", seed=seed)


def test_a_second_model_into_a_sharded_folder_is_refused_then_replaced_cleanly_with_force(images, tmp_path):
    out = tmp_path / "features"
    extract(images, out, model(0), opts(shard_size=32))
    with pytest.raises(FolderOwnedError, match=r"seed=0.*seed=1.*--force"):
        extract(images, out, model(1), opts())
    assert len(load_features(out).ids) == 40  # the first job's folder is untouched
    extract(images, out, model(1), opts(force=True))
    fresh = extract(images, tmp_path / "fresh", model(1), opts())
    got = load_features(out)
    assert got.cls_alt.equal(load_features(tmp_path / "fresh").cls_alt) and fresh.count == 40
    names = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.name != "manifest.json")  # noqa: E731
    assert names(out) == names(tmp_path / "fresh")  # no chunk of the first job (it had two) is left


def test_texts_and_pca_of_an_earlier_job_never_stay_beside_new_features(images, tmp_path):
    out = tmp_path / "features"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog\na cat\n")
    extract(images, out, model(0), opts(texts=prompts, pca=2))
    assert (out / "text_embeddings.safetensors").exists() and (out / "pca.png").exists()
    assert extract_main([str(images), "-o", str(out), "--random-init", "tiny", "--seed", "1", "--resolution", "28",
                         "--no-progress", "--num-workers", "0"]) != 0
    assert extract_main([str(images), "-o", str(out), "--random-init", "tiny", "--seed", "1", "--resolution", "28",
                         "--no-progress", "--num-workers", "0", "--force"]) == 0
    left = sorted(p.name for p in out.iterdir())
    assert left == ["chunk-00000.done.json", "features-00000.safetensors", "ids.jsonl", "img_emb", "img_emb_syn", "index.json",
                    "manifest.json", "metadata", "skipped.json"]


def test_a_job_killed_after_its_first_chunk_is_reported_incomplete_and_resumes_from_the_next(images, tmp_path,
                                                                                               monkeypatch):
    out = tmp_path / "features"
    close = extract_module.ChunkWriter.close

    def killed_after_one(self):
        if self.chunk >= 1:
            raise KeyboardInterrupt("killed")
        return close(self)

    monkeypatch.setattr(extract_module.ChunkWriter, "close", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        extract(images, out, model(0), opts(shard_size=32))
    with pytest.raises(IncompleteExtraction, match="incomplete extraction"):
        load_features(out)
    monkeypatch.setattr(extract_module.ChunkWriter, "close", close)
    with pytest.raises(FolderOwnedError):  # another job may not take over a half-written folder either
        extract(images, out, model(1), opts(shard_size=32))
    first = (out / "features-00000.safetensors").stat().st_mtime_ns
    resumed = extract(images, out, model(0), opts(shard_size=32))  # the same job resumes
    assert resumed.encoded_here == 8  # only the second chunk (40 images: 32 + 8) was encoded again
    assert (out / "features-00000.safetensors").stat().st_mtime_ns == first
    got = load_features(out)
    assert len(got.ids) == 40 == len(set(got.ids))
    assert got.cls_alt.equal(load_features_of_a_fresh_run(images, tmp_path).cls_alt)


def load_features_of_a_fresh_run(images, tmp_path):
    extract(images, tmp_path / "fresh", model(0), opts(shard_size=32))
    return load_features(tmp_path / "fresh")


def test_two_probe_checkpoints_named_final_write_two_result_files(tmp_path):
    import argparse

    from tips.formats.pretrained import save_pretrained
    from tips_eval.cli import build_model as probe_model
    from tips_eval.report import run_name

    names = set()
    for run, seed in (("a", 0), ("b", 1)):
        folder = save_pretrained(model(seed).model, tmp_path / "runs" / run / "final")
        args = argparse.Namespace(model=str(folder), random_init=None, seed=0, quantize=None, dtype="float32",
                                  text=None, tokenizer=None)
        _, identity, label = probe_model(args, "cpu")
        names.add(run_name("segmentation", "scenes", "fast", label, 0, identity))
    assert len(names) == 2
