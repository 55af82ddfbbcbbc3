"""tips-shards: folder + captions table (or shards) to reproducible, resumable, verified webdataset shards."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

from tips_pipelines import shards  # noqa: E402
from tips_pipelines.shards import main, write_shards  # noqa: E402

PHOTOS = {  # file -> skimage image
    "astronaut.jpg": "astronaut",
    "coffee.png": "coffee",
    "chelsea.jpg": "chelsea",
    "camera.png": "camera",
    "coins.webp": "coins",
    "rocket.jpg": "rocket",
}
GOOD_KEYS = ["000000000", "000000001", "cat", "000000006", "000000007", "000000008"]


def _csv(rows: list[bytes]) -> bytes:
    return b"image,alt_text,synthetic_caption,key\n" + b"".join(r + b"\n" for r in rows)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six real photos, a truncated JPEG and a captions CSV with a missing file, an empty and a non-UTF-8 row."""
    folder = tmp_path_factory.mktemp("photos")
    for name, image in PHOTOS.items():
        Image.fromarray(getattr(skimage_data, image)()).save(folder / name)
    good = (folder / "astronaut.jpg").read_bytes()
    (folder / "corrupt.jpg").write_bytes(good[: len(good) // 3])
    (folder / "captions.csv").write_bytes(_csv([
        b"astronaut.jpg,An astronaut in a white suit,A woman in a space suit in front of a flag,",
        b"coffee.png,A cup of coffee,,",
        b'chelsea.jpg,"A tabby cat, looking right",A ginger cat,cat',
        b"corrupt.jpg,A broken file,,",
        b"missing.jpg,Not on disk,,",
        b"rocket.jpg,,A rocket on its launch pad,",
        b"camera.png,A man with a camera,A black-and-white photo of a photographer,",
        b"coins.webp,Old coins,,",
        b"rocket.jpg,Rocket launch,,",
        b"chelsea.jpg,Caf\xe9 cat (latin-1 bytes),,",
    ]))
    return folder


def _sha256s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def _samples(folder: Path) -> list[dict]:
    last = len(_sha256s(folder)) - 1
    return list(wds.WebDataset(f"{folder}/shard-{{000000..{last:06d}}}.tar", shardshuffle=False))


def _write(photos: Path, out: Path, **kwargs) -> shards.Report:
    kwargs.setdefault("max_count", 2)
    return write_shards(out, images=photos, captions=photos / "captions.csv", progress=False, **kwargs)


def test_every_good_sample_is_written_once_and_each_broken_row_is_reported(photos: Path, tmp_path: Path) -> None:
    report = _write(photos, tmp_path)
    samples = _samples(tmp_path)
    assert [s["__key__"] for s in samples] == GOOD_KEYS
    assert report.written == 6 and len(report.shards) == 3
    for sample in samples:
        image_ext = next(ext for ext in ("jpg", "png", "webp") if ext in sample)
        Image.open(io.BytesIO(sample[image_ext])).load()
        meta = json.loads(sample["json"])
        assert isinstance(meta["synthetic_captions"], list) and meta["source"] == photos.name
        assert sample["txt"].decode()
    by_key = {s["__key__"]: s for s in samples}
    assert by_key["cat"]["txt"] == b"A tabby cat, looking right"
    assert json.loads(by_key["cat"]["json"])["synthetic_captions"] == ["A ginger cat"]
    assert by_key["cat"]["jpg"] == (photos / "chelsea.jpg").read_bytes()  # no resize: original bytes

    written = json.loads((tmp_path / "report.json").read_text())
    skips = {s["row"]: (s["reason"], s["file"]) for s in written["skips"]}
    assert skips == {
        3: ("bad_image", "corrupt.jpg"),
        4: ("missing_file", "missing.jpg"),
        5: ("no_alt_text", "rocket.jpg"),
        9: ("not_utf8", "chelsea.jpg"),
    }
    assert "'alt_text'" in next(s["detail"] for s in written["skips"] if s["row"] == 9)
    assert written["skipped_by_reason"] == {"missing_file": 1, "no_alt_text": 1, "not_utf8": 1, "bad_image": 1}
    assert written["without_synthetic_captions"] == 3 and written["complete"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [2, 2, 2]
    assert [s["bytes"] for s in manifest["shards"]] == [p.stat().st_size for p in sorted(tmp_path.glob("*.tar"))]
    assert {info.name: info.sha256 for info in report.shards} == _sha256s(tmp_path)


def test_tar_members_have_fixed_metadata(photos: Path, tmp_path: Path) -> None:
    import tarfile

    _write(photos, tmp_path)
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["000000000.jpg", "000000000.json", "000000000.txt",
                                         "000000001.json", "000000001.png", "000000001.txt"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o444)}


def test_interrupted_run_resumes_to_byte_identical_shards(photos: Path, tmp_path: Path, monkeypatch) -> None:
    reference = tmp_path / "reference"
    _write(photos, reference)
    out = tmp_path / "resumed"
    real, calls = shards.image_member, []

    def crash_in_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # rows 0-1 filled shard 0, row 2 opened shard 1, rows 3-5 are broken: crash at row 6
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(shards, "image_member", crash_in_second_shard)
    with pytest.raises(KeyboardInterrupt):
        _write(photos, out)
    monkeypatch.setattr(shards, "image_member", real)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "report.json", "shard-000000.tar"]
    first = (out / "shard-000000.tar").stat()
    (out / "shard-000001.tar.tmp").write_bytes(b"left by a killed run")
    report = _write(photos, out)
    assert report.reused_shards == 1
    again = (out / "shard-000000.tar").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert _sha256s(out) == _sha256s(reference)
    assert not list(out.glob("*.tmp"))
    for name in ("manifest.json", "report.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()


def test_a_finished_run_rewrites_nothing_and_other_options_need_overwrite(photos: Path, tmp_path: Path) -> None:
    _write(photos, tmp_path)
    stats = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tar")}
    assert _write(photos, tmp_path).reused_shards == 3
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tar")} == stats
    with pytest.raises(FileExistsError, match="--force"):
        _write(photos, tmp_path, max_count=4)
    report = _write(photos, tmp_path, max_count=4, overwrite=True)
    assert len(report.shards) == 2 and sorted(p.name for p in tmp_path.glob("*.tar")) == [
        "shard-000000.tar", "shard-000001.tar"]


def test_max_size_bounds_every_shard(photos: Path, tmp_path: Path) -> None:
    limit = 400_000
    report = _write(photos, tmp_path, max_count=None, max_size=limit)
    assert report.written == 6 and len(report.shards) > 1
    for info in report.shards:
        assert info.bytes <= limit or info.count == 1


def test_jsonl_table_with_caption_lists_and_broken_lines(photos: Path, tmp_path: Path) -> None:
    lines = [
        json.dumps({"image": "astronaut.jpg", "alt_text": "An astronaut", "synthetic_captions": ["one", "two"],
                    "url": "https://example.org/a.jpg"}).encode(),
        b"{not json",
        json.dumps({"image": "coffee.png", "alt_text": "Coffee"}).encode(),
        b'{"image": "coins.webp", "alt_text": "M\xfcnzen"}',
        json.dumps({"image": "camera.png", "alt_text": "Camera", "synthetic_captions": "not a list"}).encode(),
    ]
    table = tmp_path / "captions.jsonl"
    table.write_bytes(b"\n".join(lines) + b"\n\n")
    report = write_shards(tmp_path / "out", images=photos, captions=table, progress=False)
    samples = {s["__key__"]: s for s in _samples(tmp_path / "out")}
    assert sorted(samples) == ["000000000", "000000002"]
    meta = json.loads(samples["000000000"]["json"])
    assert meta["synthetic_captions"] == ["one", "two"] and meta["url"] == "https://example.org/a.jpg"
    assert json.loads(samples["000000002"]["json"])["synthetic_captions"] == []
    assert {s.row: s.reason for s in report.skips} == {1: "bad_json", 3: "not_utf8", 4: "bad_synthetic_captions"}


def test_reshard_keeps_samples_and_resize_scales_the_shorter_side(photos: Path, tmp_path: Path) -> None:
    _write(photos, tmp_path / "first")
    originals = {s["__key__"]: s for s in _samples(tmp_path / "first")}
    report = write_shards(tmp_path / "same", from_shards=tmp_path / "first", max_count=4, progress=False)
    assert report.written == 6 and report.skipped == 0
    for sample in _samples(tmp_path / "same"):
        assert {k: v for k, v in sample.items() if not k.startswith("__")} == {
            k: v for k, v in originals[sample["__key__"]].items() if not k.startswith("__")}

    write_shards(tmp_path / "small", from_shards=str(tmp_path / "first" / "shard-{000000..000002}.tar"),
                 max_count=4, resize=64, progress=False)
    resized = _samples(tmp_path / "small")
    assert [s["__key__"] for s in resized] == GOOD_KEYS
    for sample in resized:
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG" and min(image.size) == 64
        assert sample["txt"] == originals[sample["__key__"]]["txt"]


def test_reshard_reports_a_truncated_input_shard(photos: Path, tmp_path: Path) -> None:
    _write(photos, tmp_path / "first")
    shard = tmp_path / "first" / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:2000])
    report = write_shards(tmp_path / "out", from_shards=tmp_path / "first", progress=False)
    assert report.written == 4
    assert [(s.reason, s.file) for s in report.skips] == [("unreadable_shard", "shard-000001.tar")]


def test_missing_column_error_names_the_file_and_the_columns_found(photos: Path, tmp_path: Path) -> None:
    table = tmp_path / "bad.csv"
    table.write_text("image,caption\nastronaut.jpg,An astronaut\n")
    with pytest.raises(ValueError, match=r"bad\.csv: missing column\(s\) \['alt_text'\]; columns found: \['image', "):
        write_shards(tmp_path / "out", images=photos, captions=table, progress=False)


def test_cli_fails_on_skip_and_notes_missing_synthetic_captions(photos: Path, tmp_path: Path, capsys) -> None:
    argv = ["-o", str(tmp_path), "--images", str(photos), "--captions", str(photos / "captions.csv"), "--no-progress"]
    assert main(argv + ["--max-count", "3", "--fail-on-skip"]) == 1
    out = capsys.readouterr().out
    assert "6 samples in 2 shards" in out and "3 samples have no synthetic caption" in out
    assert main(argv + ["--max-count", "3"]) == 0
    assert main(["-o", str(tmp_path / "x"), "--images", str(photos), "--captions", str(photos / "nope.csv")]) == 1
    assert "nope.csv" in capsys.readouterr().err


def test_image_checks_refuse_bombs_and_turn_other_formats_into_png(photos: Path) -> None:
    from tips_pipelines.tario import image_member
    from tips.io import ImageDecodeError

    data = (photos / "astronaut.jpg").read_bytes()
    with pytest.raises(ImageDecodeError) as error:
        image_member(data, None, max_pixels=512 * 511)
    assert error.value.reason == "too_large"
    gif = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("P").save(gif, "GIF")
    ext, png = image_member(gif.getvalue(), None, max_pixels=10**8)
    assert ext == "png" and Image.open(io.BytesIO(png)).size == (512, 512)
