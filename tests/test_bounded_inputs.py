"""One odd input never ends a job, and no size is read without a bound: a 20000 x 1 PNG, a 1 GiB tar member
(sparse on disk), a 10 MB caption, a tokenizer cache fed endless distinct words."""

import io
import json
import random
import resource
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tips.models.tokenizers import BPE_CACHE_SIZE, BPETokenizer, cut_caption

GIB = 1 << 30


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_a_20000_by_1_png_is_skipped_with_a_reason_and_the_extraction_completes(tmp_path):
    from tips.inference.extract import ExtractOptions, extract

    images = tmp_path / "images"
    images.mkdir()
    (images / "a_normal.png").write_bytes(png(40, 30))
    (images / "b_thin.png").write_bytes(png(20000, 1))
    (images / "c_normal.png").write_bytes(png(30, 40))
    from tips.inference.loaded import build_model

    result = extract(images, tmp_path / "out", build_model(random_init="tiny"),
                     ExtractOptions(keep_aspect=True, resolution=56, progress=False, batch_size=2))
    assert sorted(result.ids) == ["a_normal.png", "c_normal.png"]
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert [s["id"] for s in skipped] == ["b_thin.png"] and "too_large" in skipped[0]["reason"]


def sparse_tar(path: Path, big: int = GIB) -> None:
    """Sample ``0`` a small image, sample ``1`` an image member of ``big`` bytes (a hole), sample ``2`` small."""
    def member(name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size = size
        return info.tobuf(tarfile.PAX_FORMAT)

    small = png(16, 16)
    caption = json.dumps({"synthetic_captions": ["a picture"]}).encode()

    def sample(key: str, image: bytes) -> bytes:
        out = b""
        for name, data in ((f"{key}.png", image), (f"{key}.txt", b"alt"), (f"{key}.json", caption)):
            out += member(name, len(data)) + data + b"\0" * (-len(data) % 512)
        return out

    with open(path, "wb") as f:
        f.write(sample("0", small))
        f.write(member("1.png", big))
        f.truncate(f.tell() + big)  # a hole: no disk, no bytes written
        f.seek(0, 2)
        rest = b"".join(member(n, len(d)) + d + b"\0" * (-len(d) % 512) for n, d in (("1.txt", b"alt"),
                                                                                    ("1.json", caption)))
        f.write(rest + sample("2", small) + b"\0" * 1024)


def child_peak_rss(code: str) -> tuple[str, int]:
    """Run ``code`` in a fresh interpreter after its imports; returns (stdout, how far the work raised the child's
    peak RSS above its peak after the imports, in bytes). The child's peak is also read from outside
    (RUSAGE_CHILDREN) to check the report."""
    prelude = ("import resource\nimport tips.data.sources, tips.inference.extract, tips.inference.loaded\n"
               "_BASE = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n")
    report = "\nprint('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - _BASE, _BASE)\n"
    out = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code) + report], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    grown, base = (int(v) for v in out.stdout.rsplit("RSS", 1)[1].split())
    outside = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert outside >= base + grown  # kilobytes on Linux
    return out.stdout, grown * 1024


@pytest.fixture(scope="module")
def big_member_tar(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sparse") / "shard-000000.tar"
    sparse_tar(path)
    return path


def test_a_1_gib_tar_member_is_skipped_by_the_training_reader_without_being_read(big_member_tar):
    stdout, peak = child_peak_rss(f"""
        from tips.data.skips import SkipCounter
        from tips.data.sources import Source, pass_records
        skips = SkipCounter()
        source = Source("x", "shards", [{str(big_member_tar)!r}])
        keys = [r.key for r in pass_records(source, 0, 0, 1, skips)]
        print(keys, dict(skips.totals))
    """)
    assert "['0', '2']" in stdout and "'too_large': 1" in stdout
    assert peak < GIB // 4, f"peak RSS grew by {peak / 2**20:.0f} MiB: the member was read"


def test_a_1_gib_tar_member_is_skipped_by_extraction_without_being_read(big_member_tar, tmp_path):
    stdout, peak = child_peak_rss(f"""
        import json
        from tips.inference.extract import ExtractOptions, extract
        from tips.inference.loaded import build_model
        r = extract({str(big_member_tar)!r}, {str(tmp_path / 'out')!r}, build_model(random_init="tiny"),
                    ExtractOptions(resolution=56, progress=False))
        print(sorted(r.ids), [s[0] for s in r.skipped], r.skipped[0][1][:9])
    """)
    assert "['0', '2'] ['1'] too_large" in stdout
    assert peak < GIB // 2, f"peak RSS grew by {peak / 2**20:.0f} MiB: the member was read"


def test_a_10_mb_caption_keeps_its_first_64_ids_and_is_cut_before_tokenising():
    rng = random.Random(0)
    vocab = ["a", "photo", "of", "the", "Dog", "running", "on", "grass,", "near", "42", "houses!", "&amp;", "café"]
    caption = " ".join(rng.choice(vocab) for _ in range(2_000_000))[: 10 * 2**20]
    tok = BPETokenizer()
    reference = tok._bpe.encode(" ".join(caption.split()[:300]).lower())[:64]  # open_clip on enough words
    encode = tok._bpe.encode
    seen: list[int] = []

    def bounded(text):
        seen.append(len(text))
        assert len(text) < 100_000, "the whole caption reached the tokenizer"
        return encode(text)

    tok._bpe.encode = bounded
    ids, padding = tok(caption)
    assert ids[0].tolist() == reference and not padding.any()
    assert seen and max(seen) < 64 * 257


def test_cutting_keeps_the_ids_of_captions_under_the_bound():
    tok = BPETokenizer()
    rng = random.Random(1)
    words = ["Hello", "world", "http://example.com/a_b", "x" * 200, "  ", "\tmixed\nlines", "ÉCOLE", "3.14", "(!)"]
    for _ in range(50):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 120)))
        full = tok._bpe.encode(text.lower())[:64]
        assert tok.encode(text)[:64] == full, text[:80]


def test_the_bpe_word_cache_is_bounded_and_keeps_special_tokens():
    tok = BPETokenizer()
    rng = random.Random(2)
    letters = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(BPE_CACHE_SIZE // 64 + 50):
        tok(" ".join("".join(rng.choice(letters) for _ in range(6)) for _ in range(64)))
    assert len(tok._bpe.cache) <= BPE_CACHE_SIZE
    assert tok._bpe.encode("<end_of_text>") == [tok._bpe.eot_token_id]
