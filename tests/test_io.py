"""tips.io: shard specs, reproducible shards written atomically, file digests."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest
import webdataset as wds

import tips.formats.hub
from tips.io import ShardFile, encode_sample, expand_shards, sha256_file, write_shard

SAMPLES = [
    {"__key__": "a", "txt": "first", "jpg": b"\xff\xd8 not really a jpeg", "json": b'{"synthetic_captions": ["x"]}'},
    {"__key__": "b", "json": b"{}", "txt": "second", "jpg": b"\x00" * 700},
]


def test_sha256_file_matches_hashlib_across_chunk_boundaries(tmp_path):
    data = bytes(range(256)) * 9000  # 2.3 MB: three 1 MiB chunks
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_shards_are_byte_identical_whatever_the_member_order_with_fixed_metadata(tmp_path):
    first = write_shard(tmp_path / "one.tar", SAMPLES)
    reordered = [dict(reversed(list(s.items()))) for s in SAMPLES]
    write_shard(tmp_path / "two.tar", reordered)
    one, two = (tmp_path / "one.tar").read_bytes(), (tmp_path / "two.tar").read_bytes()
    assert one == two
    assert (first.count, first.size, first.sha256) == (2, len(one), hashlib.sha256(one).hexdigest())
    assert len(one) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(one)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["a.jpg", "a.json", "a.txt", "b.jpg", "b.json", "b.txt"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o444)}


def test_webdataset_reads_the_shards_back(tmp_path):
    write_shard(tmp_path / "s.tar", SAMPLES)
    samples = list(wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False))
    assert [(s["__key__"], s["txt"]) for s in samples] == [("a", b"first"), ("b", b"second")]
    assert samples[1]["jpg"] == b"\x00" * 700


def test_a_shard_that_fails_midway_leaves_neither_a_shard_nor_a_partial_file(tmp_path):
    def broken():
        yield SAMPLES[0]
        raise RuntimeError("renderer crashed")

    (tmp_path / "s.tar").write_bytes(b"the previous, complete shard")
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_shard(tmp_path / "s.tar", broken())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tar"]
    assert (tmp_path / "s.tar").read_bytes() == b"the previous, complete shard"


def test_shard_file_size_with_predicts_the_committed_size(tmp_path):
    shard = ShardFile(tmp_path / "s.tar")
    encoded = encode_sample("k", [("txt", b"x" * 10_000)])
    predicted = shard.size_with(encoded)
    shard.write(encoded)
    assert shard.commit()[0] == predicted == (tmp_path / "s.tar").stat().st_size


def test_shard_specs_expand_lists_and_ranges_and_check_only_local_files(tmp_path):
    (tmp_path / "s-0.tar").write_bytes(b"")
    spec = f"{tmp_path}/s-{{0..1}}.tar::https://example.invalid/r-{{08..10}}.tar"
    urls = expand_shards(spec)
    assert urls == [f"{tmp_path}/s-0.tar", f"{tmp_path}/s-1.tar", "https://example.invalid/r-08.tar",
                    "https://example.invalid/r-09.tar", "https://example.invalid/r-10.tar"]
    with pytest.raises(FileNotFoundError, match=r"1 of 5 shards .* \['" + str(tmp_path / "s-1.tar")):
        expand_shards(spec, check_exists=True)


def test_a_cached_download_whose_bytes_changed_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("TIPS_CACHE", str(tmp_path))
    url = f"{tips.formats.hub.BASE_URL}/v1_0/checkpoints/example.npz"
    target = tmp_path / "example.npz"
    target.write_bytes(b"original")
    (tmp_path / "example.npz.sha256").write_text(hashlib.sha256(b"original").hexdigest() + "\n")
    assert tips.formats.hub.cached_file(url) == target
    target.write_bytes(b"altered!")
    with pytest.raises(RuntimeError, match="does not match its recorded checksum"):
        tips.formats.hub.cached_file(url)
