"""The reference encoders in ``tips_reference`` behave as the official TIPS encoders are documented to.

These tests check the ground truth itself, against independent formulations: timm's ViT (loaded through the
official-to-timm key mapping), a functional Flax-style forward over the Scenic layout (einsums on (D,H,dh)
kernels), and direct properties.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import SwiGLUPacked

from tips_reference.layouts import to_hf_safetensors, to_scenic_text, to_scenic_vision
from tips_reference.official_torch import (
    OfficialTextEncoder,
    OfficialVisionEncoder,
    load_official_npz,
    randomize_,
    save_official_npz,
    sinusoidal_positions,
    state_dict_numpy,
)

D, HEADS, PATCH, GRID = 48, 3, 8, 4


def _vision(ffn: str = "mlp", hidden: int = 112, gammas_one: bool = False, seed: int = 0) -> OfficialVisionEncoder:
    model = randomize_(OfficialVisionEncoder(D, 2, HEADS, hidden, ffn, PATCH, GRID), seed)
    if gammas_one:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("gamma"):
                    p.fill_(1.0)
    return model


def _text(seed: int = 0) -> OfficialTextEncoder:
    return randomize_(OfficialTextEncoder(vocab_size=100, width=D, depth=2, num_heads=HEADS, mlp_hidden=80), seed)


def _images(b: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _ids_and_padding(lengths: list[int], length: int = 12, vocab: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, vocab, (len(lengths), length), generator=gen)
    padding = torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]
    return ids.masked_fill(padding, 0), padding


# ---------------------------------------------------------------- image encoder


@torch.no_grad()
def test_vision_outputs_two_cls_tokens_and_row_major_patches_at_non_square_resolution() -> None:
    cls1, cls2, patches = _vision()(_images(2, 3 * PATCH, 5 * PATCH))
    assert cls1.shape == (2, 1, D) and cls2.shape == (2, 1, D) and patches.shape == (2, 15, D)


def test_vision_rejects_sizes_that_are_not_multiples_of_the_patch() -> None:
    with pytest.raises(ValueError, match="multiple"):
        _vision()(_images(1, 3 * PATCH + 1, 3 * PATCH))


@torch.no_grad()
def test_register_token_gets_no_position_and_cls_gets_pos_row_zero() -> None:
    model = _vision()
    x = _images(2, GRID * PATCH, GRID * PATCH)
    tokens = model.prepare_tokens(x)
    patches = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    assert torch.equal(tokens[:, 0], (model.cls_token + model.pos_embed[:, 0:1])[:, 0].expand(2, -1))
    assert torch.equal(tokens[:, 1], model.register_tokens[:, 0].expand(2, -1))
    torch.testing.assert_close(tokens[:, 2:], patches + model.pos_embed[:, 1:], rtol=0, atol=0)


@torch.no_grad()
def test_position_grid_is_resampled_with_antialias_only_off_the_native_grid() -> None:
    model = _vision()
    assert model.interpolate_pos_embed(GRID, GRID) is model.pos_embed
    down = model.interpolate_pos_embed(2, 3)
    assert down.shape == (1, 1 + 6, D) and torch.equal(down[:, 0], model.pos_embed[:, 0])
    grid = model.pos_embed[:, 1:].reshape(1, GRID, GRID, D).permute(0, 3, 1, 2)
    no_aa = F.interpolate(grid, size=(2, 3), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    assert (down[:, 1:] - no_aa.reshape(1, 6, D)).abs().max() > 1e-2  # the parity tests do exercise antialias


@torch.no_grad()
def test_masked_patches_are_replaced_by_the_mask_token_before_positions() -> None:
    model = _vision()
    x = _images(2, GRID * PATCH, GRID * PATCH)
    masks = torch.zeros(2, GRID * GRID, dtype=torch.bool)
    masks[0, [1, 5]] = True
    masks[1, 0] = True
    tokens, plain = model.prepare_tokens(x, masks), model.prepare_tokens(x)
    expected = model.mask_token + model.pos_embed[0, 1:][masks.nonzero()[:, 1]]
    torch.testing.assert_close(tokens[:, 2:][masks], expected, rtol=0, atol=1e-6)
    assert torch.equal(tokens[:, 2:][~masks], plain[:, 2:][~masks])


@torch.no_grad()
def test_fully_masked_image_encodes_independently_of_its_pixels() -> None:
    model = _vision()
    masks = torch.ones(1, GRID * GRID, dtype=torch.bool)
    a = model(_images(1, GRID * PATCH, GRID * PATCH, seed=3), masks)
    b = model(_images(1, GRID * PATCH, GRID * PATCH, seed=4), masks)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-6)


def _timm_from_official(model: OfficialVisionEncoder, ffn: str, hidden: int) -> torch.nn.Module:
    """The official tower as a timm ViT: no_embed_class, one register, cls_token ← cls_token + pos_embed[:,0]."""
    extra = dict(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU, mlp_ratio=2 * hidden / D) if ffn == "swiglu" \
        else dict(mlp_ratio=hidden / D)
    vit = timm.create_model(
        "vit_base_patch16_224", pretrained=False, img_size=GRID * PATCH, patch_size=PATCH, embed_dim=D, depth=2,
        num_heads=HEADS, init_values=1.0, reg_tokens=1, no_embed_class=True, num_classes=0, **extra,
    )
    sd = {k: torch.from_numpy(v) for k, v in state_dict_numpy(model).items() if k != "mask_token"}
    sd["reg_token"] = sd.pop("register_tokens")
    sd["cls_token"] = sd["cls_token"] + sd["pos_embed"][:, :1]
    sd["pos_embed"] = sd["pos_embed"][:, 1:]
    sd = {k.replace("mlp.w12.", "mlp.fc1.").replace("mlp.w3.", "mlp.fc2."): v for k, v in sd.items()}
    vit.load_state_dict(sd, strict=True)
    return vit.eval()


@pytest.mark.parametrize("ffn,hidden", [("mlp", 112), ("swiglu", 88)])
@torch.no_grad()
def test_vision_reference_matches_timm_vit_at_the_native_resolution(ffn: str, hidden: int) -> None:
    model = _vision(ffn, hidden)
    x = _images(2, GRID * PATCH, GRID * PATCH)
    cls1, cls2, patches = model(x)
    tokens = _timm_from_official(model, ffn, hidden).forward_features(x)
    torch.testing.assert_close(torch.cat([cls1, cls2, patches], 1), tokens, rtol=0, atol=1e-5)


def _layer_norm(x: torch.Tensor, p: dict, prefix: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], p[prefix + "/scale"], p[prefix + "/bias"], eps)


def _flax_attention(x: torch.Tensor, p: dict, prefix: str, key_padding: torch.Tensor | None = None) -> torch.Tensor:
    q, k, v = (torch.einsum("bnd,dhk->bnhk", x, p[f"{prefix}/{n}/kernel"]) + p[f"{prefix}/{n}/bias"]
               for n in ("query", "key", "value"))
    scores = torch.einsum("bqhk,bnhk->bhqn", q, k) / math.sqrt(q.shape[-1])
    if key_padding is not None:
        scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
    out = torch.einsum("bhqn,bnhk->bqhk", scores.softmax(-1), v)
    return torch.einsum("bqhk,hkd->bqd", out, p[prefix + "/out/kernel"]) + p[prefix + "/out/bias"]


def _dense(x: torch.Tensor, p: dict, prefix: str) -> torch.Tensor:
    return x @ p[prefix + "/kernel"] + p[prefix + "/bias"]


def _scenic_vision_forward(p: dict, x: torch.Tensor, patch: int) -> torch.Tensor:
    """A Flax-style forward over Scenic params: (B,3,H,W) → (B,2+N,D) final tokens."""
    b, _, hh, ww = x.shape
    h, w = hh // patch, ww // patch
    pixels = x.reshape(b, 3, h, patch, w, patch).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, patch, patch, 3)
    tokens = torch.einsum("bnijc,ijcd->bnd", pixels, p["encoder/ToTokenSequence_0/embedding/kernel"])
    tokens = tokens + p["encoder/ToTokenSequence_0/embedding/bias"]
    grid = p["encoder/ToTokenSequence_0/posembed_input"].permute(0, 3, 1, 2)
    if grid.shape[-2:] != (h, w):
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    tokens = tokens + grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
    tokens = torch.cat([p["encoder/ToTokenSequence_0/cls"].expand(b, -1, -1), tokens], dim=1)
    i = 0
    while f"encoder/transformer/encoderblock_{i}/LayerNorm_0/scale" in p:
        blk = f"encoder/transformer/encoderblock_{i}"
        tokens = tokens + _flax_attention(_layer_norm(tokens, p, blk + "/LayerNorm_0", 1e-6), p,
                                          blk + "/MultiHeadDotProductAttention_0")
        y = _layer_norm(tokens, p, blk + "/LayerNorm_1", 1e-6)
        if blk + "/FFNSwiGluFused_0/Dense_0/kernel" in p:
            f = blk + "/FFNSwiGluFused_0"
            y = _dense(F.silu(_dense(y, p, f + "/Dense_0")) * _dense(y, p, f + "/Dense_1"), p, f + "/Dense_2")
        else:
            y = _dense(F.gelu(_dense(y, p, blk + "/MlpBlock_0/Dense_0")), p, blk + "/MlpBlock_0/Dense_1")
        tokens, i = tokens + y, i + 1
    return _layer_norm(tokens, p, "encoder/encoder_norm", 1e-6)


@pytest.mark.parametrize("ffn,hidden", [("mlp", 112), ("swiglu", 88)])
@pytest.mark.parametrize("size", [(GRID * PATCH, GRID * PATCH), (3 * PATCH, 6 * PATCH)])
@torch.no_grad()
def test_scenic_layout_reproduces_the_reference_in_a_flax_style_forward(ffn: str, hidden: int, size) -> None:
    model = _vision(ffn, hidden, gammas_one=True)
    params = {k: torch.from_numpy(v) for k, v in to_scenic_vision(state_dict_numpy(model), num_heads=HEADS).items()}
    assert params["encoder/ToTokenSequence_0/cls"].shape == (1, 2, D)
    assert params["encoder/ToTokenSequence_0/posembed_input"].shape == (1, GRID, GRID, D)
    assert params["encoder/transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"].shape == \
        (D, HEADS, D // HEADS)
    assert not any("mask_token" in k or "gamma" in k for k in params)
    x = _images(2, *size)
    cls1, cls2, patches = model(x)
    torch.testing.assert_close(_scenic_vision_forward(params, x, PATCH), torch.cat([cls1, cls2, patches], 1),
                               rtol=0, atol=1e-5)


def test_scenic_layout_refuses_a_model_with_layerscale() -> None:
    with pytest.raises(ValueError, match="gamma"):
        to_scenic_vision(state_dict_numpy(_vision()), num_heads=HEADS)


# ---------------------------------------------------------------- text encoder


def test_sinusoids_are_sin_then_cos_concatenated_with_geometric_timescales() -> None:
    table = sinusoidal_positions(64, 8)
    assert torch.equal(table[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    p = 5.0
    omega = torch.tensor([1.0, 1e4 ** (-1 / 3), 1e4 ** (-2 / 3), 1e-4], dtype=torch.float64)
    expected = torch.cat([torch.sin(p * omega), torch.cos(p * omega)]).float()
    torch.testing.assert_close(table[5], expected)
    assert sinusoidal_positions(3, 7)[:, -1].abs().max() == 0  # odd width: one zero column


@torch.no_grad()
def test_text_output_ignores_what_is_in_padded_positions() -> None:
    model = _text()
    ids, padding = _ids_and_padding([3, 7, 12])
    garbage = torch.where(padding, torch.randint(1, 100, ids.shape), ids)
    torch.testing.assert_close(model(ids, padding), model(garbage, padding), rtol=0, atol=1e-6)
    assert model(ids, padding).shape == (3, D)


@torch.no_grad()
def test_text_row_does_not_depend_on_the_length_of_the_batch() -> None:
    model = _text()
    ids, padding = _ids_and_padding([4, 9])
    short = model(ids[:1, :4], padding[:1, :4])
    torch.testing.assert_close(model(ids, padding)[:1], short, rtol=0, atol=1e-5)


def _scenic_text_forward(p: dict, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    emb = p["token_emb/emb_var"]
    x = emb[ids] * math.sqrt(emb.shape[1]) + sinusoidal_positions(ids.shape[1], emb.shape[1])
    keep = (~padding).float()[..., None]
    i = 0
    while f"transformer/encoderblock_{i}/LayerNorm_0/scale" in p:
        blk = f"transformer/encoderblock_{i}"
        x = x + _flax_attention(_layer_norm(x, p, blk + "/LayerNorm_0", 1e-5), p,
                                blk + "/MultiHeadDotProductAttention_0", padding)
        y = F.relu(_dense(_layer_norm(x, p, blk + "/LayerNorm_1", 1e-5), p, blk + "/MlpBlock_0/Dense_0")) * keep
        x, i = x + _dense(y, p, blk + "/MlpBlock_0/Dense_1") * keep, i + 1
    x = _layer_norm(x, p, "text_encoder_norm", 1e-5)
    return (x * keep).sum(1) / (keep.sum(1) + 1e-8)


@torch.no_grad()
def test_text_reference_matches_an_explicit_attention_forward_over_the_scenic_layout() -> None:
    model = _text()
    params = to_scenic_text(state_dict_numpy(model), temperature=0.01, num_heads=HEADS)
    assert float(params["temperature_contrastive"]) == pytest.approx(0.01)
    params = {k: torch.from_numpy(v) for k, v in params.items()}
    ids, padding = _ids_and_padding([1, 5, 12])
    torch.testing.assert_close(_scenic_text_forward(params, ids, padding), model(ids, padding), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- files


@torch.no_grad()
def test_official_npz_holds_exactly_the_official_keys_and_round_trips(tmp_path) -> None:
    vision, text = _vision("swiglu", 88), _text()
    vpath = save_official_npz(vision, tmp_path / "v.npz")
    tpath = save_official_npz(text, tmp_path / "t.npz", temperature=0.0047851)
    with np.load(vpath, allow_pickle=False) as f:
        keys = set(f.files)
    assert {"cls_token", "register_tokens", "pos_embed", "mask_token", "patch_embed.proj.weight",
            "blocks.1.attn.qkv.weight", "blocks.1.ls2.gamma", "blocks.0.mlp.w12.weight", "norm.bias"} <= keys
    assert not any(k.startswith("blocks.2.") for k in keys)
    with np.load(tpath, allow_pickle=False) as f:
        assert f["temperature"].shape == () and "transformer.resblocks.1.attn.in_proj_weight" in f.files
    fresh_v = OfficialVisionEncoder(D, 2, HEADS, 88, "swiglu", PATCH, GRID).eval()
    fresh_t = OfficialTextEncoder(100, D, 2, HEADS, 80).eval()
    assert load_official_npz(fresh_v, vpath) is None
    assert load_official_npz(fresh_t, tpath) == pytest.approx(0.0047851)
    x, (ids, padding) = _images(1, 2 * PATCH, 3 * PATCH), _ids_and_padding([2])
    for u, v in zip(vision(x), fresh_v(x)):
        assert torch.equal(u, v)
    assert torch.equal(text(ids, padding), fresh_t(ids, padding))


def test_hf_layout_prefixes_both_towers_and_keeps_temperature_in_the_config(tmp_path) -> None:
    from safetensors.numpy import load_file

    path = to_hf_safetensors(state_dict_numpy(_vision()), {**state_dict_numpy(_text()), "temperature": 0.1},
                             tmp_path / "hf", {"temperature": 0.1})
    tensors = load_file(str(path))
    assert "vision_encoder.register_tokens" in tensors and "text_encoder.ln_final.weight" in tensors
    assert not any(k.endswith("temperature") for k in tensors)
    assert (tmp_path / "hf" / "config.json").read_text().count("temperature") == 1
