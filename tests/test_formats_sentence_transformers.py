"""``tips-export --format sentence-transformers``: ``SentenceTransformer(DIR)`` (built-in modules only, no
remote code, offline) embeds strings and PIL images into the same space as tips, in both image CLS spaces, with
``truncate_dim`` for Matryoshka widths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import tips
from tips.cli.export import main as export_main

st = pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from formats_spm import train_tiny_spm

    folder = tmp_path_factory.mktemp("st")
    torch.manual_seed(0)
    model = tips.create_model("tiny", tokenizer=str(train_tiny_spm(folder)), **{"text.depth": 1})
    tips.save(model, folder / "ours")
    for cls in ("alt", "syn"):
        assert export_main(["--model", str(folder / "ours"), "--format", "sentence-transformers", "--cls", cls,
                            "-o", str(folder / cls)]) == 0
    return model, folder


def unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).detach().numpy()


def photo(size: tuple[int, int]) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea()).resize(size)


def test_the_folder_uses_only_built_in_modules_and_tipsv2model(exported):
    _, folder = exported
    modules = json.loads((folder / "alt" / "modules.json").read_text())
    assert all(m["type"].startswith("sentence_transformers.") for m in modules)
    assert json.loads((folder / "alt" / "config.json").read_text())["architectures"] == ["Tipsv2Model"]
    assert not list((folder / "alt").rglob("*.py"))  # no module code to trust


@pytest.mark.parametrize("cls", ["alt", "syn"])
def test_texts_and_images_at_the_input_size_equal_tips(exported, cls):
    model, folder = exported
    encoder = st.SentenceTransformer(str(folder / cls), device="cpu")
    texts = ["a cat on a sofa", "two dogs playing in the snow"]
    with torch.inference_mode():
        expected_text = unit(model.encode_text(texts))
        image = photo((model.image_size, model.image_size))
        expected_image = unit(getattr(model.encode_image(model.preprocess(image)[None]), f"cls_{cls}"))
    got_text = encoder.encode(texts)
    got_image = encoder.encode([image])
    assert (got_text * expected_text).sum(1).min() >= 0.9999
    assert float(got_image[0] @ expected_image[0]) >= 0.9999


def test_truncate_dim_gives_the_renormalised_first_dimensions(exported):
    model, folder = exported
    encoder = st.SentenceTransformer(str(folder / "alt"), device="cpu", truncate_dim=48)
    got = encoder.encode(["a red bicycle"], normalize_embeddings=True)
    with torch.inference_mode():
        full = model.encode_text(["a red bicycle"])
    assert got.shape == (1, 48)
    np.testing.assert_allclose(got, unit(full[:, :48]), atol=1e-5)


def test_a_photo_that_needs_resizing_is_close_and_its_cosine_is_reported(exported, record_property, capsys):
    """transformers' image processor resizes a uint8 photo (torchvision); tips resizes float pixels: they differ by
    rounding, so the cosine is reported rather than held to 0.9999."""
    model, folder = exported
    encoder = st.SentenceTransformer(str(folder / "alt"), device="cpu")
    image = photo((301, 197))
    with torch.inference_mode():
        expected = unit(model.encode_image(model.preprocess(image)[None]).cls_alt)[0]
    cosine = float(encoder.encode([image])[0] @ expected)
    record_property("resized_photo_cosine", cosine)
    with capsys.disabled():
        print(f"\nsentence-transformers vs tips on a 301x197 photo resized to {model.image_size}: cosine {cosine:.8f} (1 - cosine = {1 - cosine:.2e})")
    assert cosine >= 0.99


def test_tips_load_reads_the_original_model_back_from_a_syn_folder(exported):
    """The swapped CLS tokens are swapped back (an ``alt`` folder is the transformers layout, tested there)."""
    from tips.formats.detect import detect

    model, folder = exported
    assert detect(folder / "syn").format == "sentence-transformers"
    x = photo((model.image_size, model.image_size))
    with torch.inference_mode():
        want = model.encode_image(model.preprocess(x)[None])
        got = tips.load(folder / "syn").encode_image(model.preprocess(x)[None])
    torch.testing.assert_close(got.cls_alt, want.cls_alt, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.cls_syn, want.cls_syn, atol=1e-5, rtol=0)
