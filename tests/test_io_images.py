"""tips.io's image decoder: one size limit per call read from the header, one exception with a reason, JPEG draft
decoding that is deterministic, and PIL's process-wide settings left alone."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from tips.io import ImageDecodeError, decode_image
from tips.models import to_rgb


def decode_rgb(data: bytes, **kwargs):
    """What every reader of images does: decode in the stored mode, then convert to what a model reads."""
    return to_rgb(decode_image(data, **kwargs), in_place=True)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth random colours (JPEG-friendly), width x height."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BILINEAR)


def test_a_too_large_image_is_refused_from_its_header_with_the_reason_and_pil_is_left_alone():
    before = Image.MAX_IMAGE_PIXELS
    data = _encode(_photo(300, 200), "JPEG")
    with pytest.raises(ImageDecodeError) as error:
        decode_rgb(data, max_pixels=300 * 200 - 1)
    assert error.value.reason == "too_large" and "300x200" in str(error.value)
    truncated = _encode(_photo(300, 200), "PNG")[:100]  # header only: refused before any pixel is decoded
    with pytest.raises(ImageDecodeError) as error:
        decode_image(truncated, max_pixels=1000)
    assert error.value.reason == "too_large"
    assert decode_rgb(data, max_pixels=300 * 200).size == (300, 200)
    assert decode_rgb(data, max_pixels=None).size == (300, 200)
    assert Image.MAX_IMAGE_PIXELS == before


def test_limits_of_concurrent_threads_do_not_leak_into_each_other():
    data = _encode(_photo(64, 64), "PNG")
    before = Image.MAX_IMAGE_PIXELS
    wrong: list[str] = []

    def decode_many(max_pixels: int, should_pass: bool) -> None:
        for _ in range(200):
            try:
                decode_rgb(data, max_pixels=max_pixels)
                passed = True
            except ImageDecodeError:
                passed = False
            if passed != should_pass:
                wrong.append(f"max_pixels={max_pixels}: passed={passed}")

    jobs = [(100, False), (10**6, True)] * 3
    threads = [threading.Thread(target=decode_many, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [] and Image.MAX_IMAGE_PIXELS == before


@pytest.mark.parametrize("data, detail", [
    (b"this is not an image", "not an image"),
    (_encode(_photo(200, 150), "JPEG")[:2000], "truncated"),
    (_encode(_photo(200, 150), "PNG")[:400], ""),
])
def test_damaged_or_foreign_bytes_are_bad_image_with_a_reason(data, detail):
    for decode in (decode_image, decode_rgb):
        with pytest.raises(ImageDecodeError) as error:
            decode(data, max_pixels=None)
        assert error.value.reason == "bad_image" and detail in error.value.detail.lower()


def test_decode_rgb_applies_exif_orientation_and_puts_alpha_on_white():
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90°
    rotated = decode_rgb(_encode(_photo(120, 80), "JPEG", exif=exif), max_pixels=None)
    assert rotated.mode == "RGB" and rotated.size == (80, 120)
    clear = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert decode_rgb(_encode(clear, "PNG"), max_pixels=None).getpixel((5, 5)) == (255, 255, 255)
    stored = decode_image(_encode(clear, "PNG"), max_pixels=None)
    assert stored.mode == "RGBA"  # decode_image keeps the stored mode


def test_to_rgb_returns_an_image_that_survives_closing_its_source():
    source = Image.open(io.BytesIO(_encode(_photo(32, 24), "PNG")))
    rgb = to_rgb(source)
    source.close()
    assert rgb.size == (32, 24) and rgb.getpixel((0, 0)) is not None


def test_jpeg_draft_decodes_at_the_largest_reduction_that_keeps_the_requested_size_deterministically():
    data = _encode(_photo(1600, 1200), "JPEG", quality=90)
    assert decode_rgb(data, max_pixels=None).size == (1600, 1200)
    first = decode_rgb(data, max_pixels=None, draft=(400, 300))
    again = decode_rgb(data, max_pixels=None, draft=lambda w, h: (w // 4, h // 4))
    assert first.size == (400, 300) and np.array_equal(np.asarray(first), np.asarray(again))
    assert decode_rgb(data, max_pixels=None, draft=(401, 300)).size == (800, 600)  # 1/4 would be too small
    assert decode_rgb(data, max_pixels=None, draft=lambda w, h: None).size == (1600, 1200)
    png = _encode(_photo(400, 300), "PNG")
    assert decode_rgb(png, max_pixels=None, draft=(100, 75)).size == (400, 300)  # only JPEG has a draft mode
