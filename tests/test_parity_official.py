"""Parity of ``tips.load`` models with the official TIPS reference encoders (tips_reference), for every layout.

The reference encoders follow the official PyTorch port (image and text towers, their ``.npz`` layouts); files are written in the official PyTorch
``.npz``, Scenic ``.npz`` and Hugging Face layouts from random, deliberately non-trivial weights (LayerScale γ ≠ 1,
non-zero ``pos_embed[:,0]`` and ``mask_token``) and loaded by the library. All outputs must agree to 1e-4 (fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

import tips
from tips_reference.layouts import save_npz, to_hf_safetensors, to_scenic_text, to_scenic_vision
from tips_reference.official_torch import (
    OfficialTextEncoder,
    OfficialVisionEncoder,
    randomize_,
    save_official_npz,
    state_dict_numpy,
)

ATOL = 1e-4
TEXT_LENGTH = 64
TEMPERATURE = 0.0047851


@dataclass(frozen=True)
class Case:
    """A tiny architecture with the traits of one official variant, and the image sizes to compare at."""

    name: str
    width: int
    depth: int
    heads: int
    mlp_hidden: int
    ffn: str
    patch: int
    grid: int
    sizes: tuple[tuple[int, int], ...]  # (H, W); the first is the native G·p square
    vocab: int = 1000
    text_hidden: int = 128


CASES = [
    # B/L-like: GELU MLP, patch 14, the v1 16×16 grid; non-square, downsampled (antialias) and upsampled inputs.
    Case("mlp_p14_grid16", 64, 2, 4, 256, "mlp", 14, 16, ((224, 224), (182, 266), (98, 140), (336, 252)),
         vocab=32000),
    # So400m-like: odd MLP hidden from the 4304/1152 ratio (48·4304/1152 = 179.3 → 179), patch 8.
    Case("so400m_odd_hidden_p8", 48, 3, 3, int(48 * 4304 / 1152), "mlp", 8, 6, ((48, 48), (40, 64), (24, 32))),
    # g-like: SwiGLU with a per-branch hidden of 88 that no mlp_ratio of 64 gives.
    Case("swiglu_hidden88_p14", 64, 2, 2, 88, "swiglu", 14, 4, ((56, 56), (42, 70), (112, 84))),
]


def _reference(case: Case, seed: int, layerscale: bool = True) -> tuple[OfficialVisionEncoder, OfficialTextEncoder]:
    vision = randomize_(OfficialVisionEncoder(case.width, case.depth, case.heads, case.mlp_hidden, case.ffn,
                                              case.patch, case.grid), seed)
    text = randomize_(OfficialTextEncoder(case.vocab, case.width, 2, case.heads, case.text_hidden), seed + 1)
    if not layerscale:  # Scenic has no LayerScale: only γ = 1 models can be written in its layout
        with torch.no_grad():
            for name, p in vision.named_parameters():
                if name.endswith(".gamma"):
                    p.fill_(1.0)
    return vision, text


def _images(b: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, *size, generator=torch.Generator().manual_seed(seed))


def _patch_mask(b: int, n: int, seed: int = 0) -> torch.Tensor:
    """(B, N) bool, True = masked, ~40 % of patches, every row different."""
    return torch.rand(b, n, generator=torch.Generator().manual_seed(seed)) < 0.4


def _tokenize(rows: list[list[int]], length: int = TEXT_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Official rules on already-encoded rows: truncate each row to ``length``, pad with id 0, padding per row."""
    ids = torch.zeros(len(rows), length, dtype=torch.int64)
    padding = torch.ones(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        row = row[:length]
        ids[i, : len(row)] = torch.tensor(row)
        padding[i, : len(row)] = False
    return ids, padding


def _texts(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of 1, 5, 23 and 80 tokens (the last one truncated to 64, so it has no padding at all)."""
    gen = torch.Generator().manual_seed(7)
    return _tokenize([torch.randint(1, vocab, (n,), generator=gen).tolist() for n in (1, 5, 23, 80)])


def _assert_image_parity(model, reference: OfficialVisionEncoder, x: torch.Tensor, mask=None) -> None:
    with torch.no_grad():
        cls1, cls2, patches = reference(x, mask)
        out = model.encode_image(x) if mask is None else model.encode_image(x, mask)
    b, _, h, w = x.shape
    p = reference.patch_size
    assert out.patch_tokens.shape == (b, h // p, w // p, reference.embed_dim)
    for got, want, what in ((out.cls_alt, cls1[:, 0], "cls_alt"), (out.cls_syn, cls2[:, 0], "cls_syn"),
                            (out.patch_tokens, patches.reshape(b, h // p, w // p, -1), "patch_tokens")):
        err = (got.float() - want).abs().max().item()
        assert err <= ATOL, f"{what} at {h}x{w}{' masked' if mask is not None else ''}: max |Δ| = {err:.3g}"


def _assert_text_parity(model, reference: OfficialTextEncoder, vocab: int) -> None:
    ids, padding = _texts(vocab)
    with torch.no_grad():
        want = reference(ids, padding)
        got = model.encode_text(ids, padding)
    assert got.shape == want.shape
    err = (got.float() - want).abs().max().item()
    assert err <= ATOL, f"text embedding: max |Δ| = {err:.3g}"


# ------------------------------------------------------------------------------------- official PyTorch .npz


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def official(request, tmp_path_factory):
    """(case, reference vision, reference text, loaded library model) for the official PyTorch layout."""
    case: Case = request.param
    vision, text = _reference(case, seed=10)
    folder = tmp_path_factory.mktemp(case.name)
    vpath = save_official_npz(vision, folder / "m_vision.npz")
    tpath = save_official_npz(text, folder / "m_text.npz", temperature=TEMPERATURE)
    model = tips.load(vpath, text=tpath, tokenizer=None, heads=case.heads)
    return case, vision, text, model


def test_official_files_load_with_layerscale_and_cls_position_as_stored(official) -> None:
    case, vision, _, _ = official
    assert not torch.all(vision.blocks[0].ls1.gamma == 1) and vision.pos_embed[0, 0].abs().max() > 0
    assert vision.mask_token.abs().max() > 0


def test_cls_and_patch_tokens_match_official_encoder_at_native_resolution(official) -> None:
    case, vision, _, model = official
    _assert_image_parity(model, vision, _images(2, case.sizes[0]))


def test_cls_and_patch_tokens_match_official_encoder_at_other_resolutions(official) -> None:
    """Non-square, smaller (antialiased downsampling of the grid) and larger (upsampling) inputs."""
    case, vision, _, model = official
    for i, size in enumerate(case.sizes[1:]):
        _assert_image_parity(model, vision, _images(2, size, seed=i + 1))


def test_masked_patches_match_official_encoder_with_mask_token(official) -> None:
    case, vision, _, model = official
    for size in (case.sizes[0], case.sizes[1]):
        n = (size[0] // case.patch) * (size[1] // case.patch)
        _assert_image_parity(model, vision, _images(2, size, seed=5), _patch_mask(2, n))


def test_text_embeddings_match_official_encoder_with_varied_padding(official) -> None:
    case, _, text, model = official
    _assert_text_parity(model, text, case.vocab)


def test_temperature_is_read_from_the_text_file(official) -> None:
    assert official[3].temperature == pytest.approx(TEMPERATURE)


def test_text_file_without_temperature_gives_none(tmp_path) -> None:
    case = CASES[1]
    vision, text = _reference(case, seed=3)
    model = tips.load(save_official_npz(vision, tmp_path / "v.npz"), text=save_official_npz(text, tmp_path / "t.npz"),
                      heads=case.heads)
    assert model.temperature is None
    _assert_text_parity(model, text, case.vocab)


def test_heads_are_inferred_from_official_widths(tmp_path) -> None:
    """Width 128 → 2 heads of 64 (the official head width) without any override."""
    case = Case("w128", 128, 1, 2, 256, "mlp", 14, 2, ((28, 28),))
    vision, text = _reference(case, seed=4)
    model = tips.load(save_official_npz(vision, tmp_path / "v.npz"), text=save_official_npz(text, tmp_path / "t.npz"))
    _assert_image_parity(model, vision, _images(1, (42, 28)))
    _assert_text_parity(model, text, case.vocab)


# ------------------------------------------------------------------------------------- Scenic .npz


@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=lambda c: c.name)
def test_scenic_files_match_official_encoder(case: Case, tmp_path) -> None:
    """Scenic stores cls = cls_token + pos_embed[:,0] and a (1,G,G,D) grid; heads come from the (D,H,dh) kernels."""
    vision, text = _reference(case, seed=20, layerscale=False)
    vpath = save_npz(to_scenic_vision(state_dict_numpy(vision), num_heads=case.heads), tmp_path / "s_vision.npz")
    tpath = save_npz(to_scenic_text(state_dict_numpy(text), TEMPERATURE, num_heads=case.heads), tmp_path / "s_text")
    model = tips.load(vpath, text=tpath)
    _assert_image_parity(model, vision, _images(2, case.sizes[0]))
    _assert_image_parity(model, vision, _images(2, case.sizes[1], seed=1))
    _assert_text_parity(model, text, case.vocab)
    assert model.temperature == pytest.approx(TEMPERATURE)


# ------------------------------------------------------------------------------------- Hugging Face safetensors


def test_hugging_face_layout_matches_official_encoder_from_folder_and_file(tmp_path) -> None:
    case = Case("hf_w128", 128, 2, 2, 344, "mlp", 14, 4, ((56, 56), (42, 84)))
    vision, text = _reference(case, seed=30)
    weights = to_hf_safetensors(state_dict_numpy(vision), state_dict_numpy(text), tmp_path / "tipsv2-tiny",
                                {"model_type": "tips", "temperature": TEMPERATURE})
    for source in (weights.parent, weights):
        model = tips.load(source)
        for i, size in enumerate(case.sizes):
            _assert_image_parity(model, vision, _images(2, size, seed=i))
        _assert_text_parity(model, text, case.vocab)
        assert model.temperature == pytest.approx(TEMPERATURE)


def test_hugging_face_swiglu_layout_matches_official_encoder(tmp_path) -> None:
    case = CASES[2]
    vision, text = _reference(case, seed=31)
    weights = to_hf_safetensors(state_dict_numpy(vision), state_dict_numpy(text), tmp_path / "hf",
                                {"temperature": TEMPERATURE})
    model = tips.load(weights, heads=case.heads)
    n = (case.sizes[1][0] // case.patch) * (case.sizes[1][1] // case.patch)
    _assert_image_parity(model, vision, _images(2, case.sizes[1]), _patch_mask(2, n, seed=3))


# ------------------------------------------------------------------------------------- shape errors


def _official_state_dicts(case: Case) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Official vision and text state dicts (the text one with its temperature), ready to corrupt and save."""
    vision, text = _reference(case, seed=40)
    return state_dict_numpy(vision), {**state_dict_numpy(text), "temperature": np.float32(TEMPERATURE)}


@pytest.mark.parametrize("key", ["blocks.1.attn.proj.weight", "pos_embed", "blocks.0.ls2.gamma"])
def test_wrong_shape_in_official_vision_file_raises_naming_the_key(key: str, tmp_path) -> None:
    case = CASES[1]
    vsd, tsd = _official_state_dicts(case)
    vsd[key] = vsd[key][..., :-1] if key != "pos_embed" else vsd[key][:, :-3]
    vpath, tpath = save_npz(vsd, tmp_path / "v.npz"), save_npz(tsd, tmp_path / "t.npz")
    with pytest.raises((ValueError, KeyError), match=key.replace(".", r"\.")):
        tips.load(vpath, text=tpath, heads=case.heads)


def test_wrong_shape_in_official_text_file_raises_naming_the_key(tmp_path) -> None:
    case = CASES[1]
    vsd, tsd = _official_state_dicts(case)
    key = "transformer.resblocks.1.mlp.c_proj.bias"
    tsd[key] = tsd[key][:-1]
    with pytest.raises((ValueError, KeyError), match=key.replace(".", r"\.")):
        tips.load(save_npz(vsd, tmp_path / "v.npz"), text=save_npz(tsd, tmp_path / "t.npz"), heads=case.heads)


def test_missing_key_in_official_vision_file_raises_naming_the_key(tmp_path) -> None:
    case = CASES[1]
    vsd, tsd = _official_state_dicts(case)
    del vsd["blocks.2.norm2.bias"]
    with pytest.raises((ValueError, KeyError), match=r"blocks\.2\.norm2\.bias"):
        tips.load(save_npz(vsd, tmp_path / "v.npz"), text=save_npz(tsd, tmp_path / "t.npz"), heads=case.heads)


def test_wrong_shape_in_hugging_face_file_raises_naming_the_key(tmp_path) -> None:
    case = CASES[1]
    vsd, tsd = _official_state_dicts(case)
    vsd["norm.weight"] = vsd["norm.weight"][:-1]
    weights = to_hf_safetensors(vsd, tsd, tmp_path / "hf", {"temperature": TEMPERATURE})
    with pytest.raises((ValueError, KeyError), match=r"norm\.weight"):
        tips.load(weights, heads=case.heads)
