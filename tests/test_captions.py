"""tips-caption: one synthetic caption per readable image, resumable per shard, clear offline errors."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

from tips_pipelines import captions  # noqa: E402
from tips.io.work_chunks import chunks_for_process  # noqa: E402
from tips_pipelines.captions import caption_shards, main  # noqa: E402
from tips_pipelines.tario import iter_tar_samples  # noqa: E402

WORDS = "a photo of the cat dog man woman rocket coffee cup on table sky red blue".split()


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised two-layer BLIP captioner with a 22-word BERT tokenizer, saved like a hub model."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("tiny-blip")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS]) + "\n")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]")
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
    config = BlipConfig(
        text_config={**small, "vocab_size": 6 + len(WORDS), "max_position_embeddings": 64, "pad_token_id": 0,
                     "bos_token_id": tokenizer.bos_token_id, "sep_token_id": 3, "eos_token_id": 3},
        vision_config={**small, "image_size": 32, "patch_size": 16},
        projection_dim=32,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    return folder / "model"


def _jpeg(image: str, size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(getattr(skimage_data, image)()).convert("RGB").resize((size, size)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three shards of two samples; shard 1 holds a truncated JPEG, shard 2 a sample that has a caption already."""
    folder = tmp_path_factory.mktemp("shards")
    samples = [
        [("astronaut", _jpeg("astronaut"), []), ("coffee", _jpeg("coffee"), [])],
        [("chelsea", _jpeg("chelsea"), []), ("corrupt", _jpeg("camera")[:300], [])],
        [("camera", _jpeg("camera"), []), ("rocket", _jpeg("rocket"), ["A rocket on the pad"])],
    ]
    for i, shard in enumerate(samples):
        with wds.TarWriter(str(folder / f"shard-{i:06d}.tar")) as sink:
            for key, image, existing in shard:
                meta = {"synthetic_captions": existing, "source": "skimage"}
                sink.write({"__key__": key, "jpg": image, "txt": f"alt text for {key}", "json": json.dumps(meta)})
    return folder


def _run(shards: Path, out: Path, model: Path) -> captions.CaptionReport:
    return caption_shards(shards, out, str(model), batch_size=2, max_new_tokens=6, progress=False)


def _sha256s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_every_readable_image_gains_one_caption_and_the_corrupt_one_is_counted(
    shards: Path, tiny_blip: Path, tmp_path: Path
) -> None:
    report = _run(shards, tmp_path, tiny_blip)
    assert (report.samples, report.captioned) == (6, 5)
    assert [(f["shard"], f["key"], f["reason"]) for f in report.failures] == [
        ("shard-000001.tar", "corrupt", "bad_image")]
    assert json.loads((tmp_path / "report.json").read_text())["failed_by_reason"] == {"bad_image": 1}
    for shard in sorted(shards.glob("*.tar")):
        before = list(iter_tar_samples(shard))
        after = list(iter_tar_samples(tmp_path / shard.name))
        assert [s.key for s in after] == [s.key for s in before]
        for old, new in zip(before, after):
            assert {k: v for k, v in new.members.items() if k != "json"} == {
                k: v for k, v in old.members.items() if k != "json"}
            old_captions = json.loads(old.members["json"])["synthetic_captions"]
            new_meta = json.loads(new.members["json"])
            assert new_meta["source"] == "skimage"
            if old.key == "corrupt":
                assert new.members["json"] == old.members["json"]
            else:
                assert new_meta["synthetic_captions"][:-1] == old_captions
                caption = new_meta["synthetic_captions"][-1]
                assert isinstance(caption, str) and caption and set(caption.split()) <= set(WORDS)


def test_interrupted_run_resumes_without_rewriting_finished_shards(
    shards: Path, tiny_blip: Path, tmp_path: Path, monkeypatch
) -> None:
    reference = tmp_path / "reference"
    _run(shards, reference, tiny_blip)
    out = tmp_path / "resumed"
    real, calls = captions.Captioner.__call__, []

    def crash_on_second_shard(self, images):
        calls.append(1)
        if len(calls) == 2:  # batch size 2: one call per shard
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(captions.Captioner, "__call__", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        _run(shards, out, tiny_blip)
    monkeypatch.setattr(captions.Captioner, "__call__", real)
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard-000000.tar.done.json"]
    first = (out / "shard-000000.tar").stat()

    report = _run(shards, out, tiny_blip)
    again = (out / "shard-000000.tar").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert _sha256s(out) == _sha256s(reference)
    assert report.captioned == 5 and not report.missing
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    _run(shards, out, tiny_blip)  # everything done: nothing is rewritten
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == done


def test_a_hub_id_offline_fails_clearly_and_names_the_model(shards: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main([str(shards), "-o", str(tmp_path / "out"), "--captioner", "Salesforce/blip-image-captioning-base",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "'Salesforce/blip-image-captioning-base'" in err and "local path" in err and "HF_HUB_OFFLINE" in err
    assert not list((tmp_path / "out").glob("*.tar"))
    assert main([str(shards), "-o", str(tmp_path / "out"), "--captioner", str(tmp_path / "no-such-model")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_shard_i_goes_to_process_i_mod_n() -> None:
    paths = [Path(f"shard-{i:06d}.tar") for i in range(7)]
    split = [chunks_for_process(paths, rank, 3) for rank in range(3)]
    assert [[int(p.stem[-1]) for p in part] for part in split] == [[0, 3, 6], [1, 4], [2, 5]]
