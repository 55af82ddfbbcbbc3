"""The TIPS image tower on timm: readout, positions, masking, intermediates."""

import pytest
import torch
import torch.nn.functional as F

import tips
from tips.models import get_variant, resample_pos_grid
from tips.models.vision import build_vision_tower, split_tokens


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    cfg = get_variant("tiny", **{"vision.depth": 2}).vision
    t = build_vision_tower(cfg).eval()
    with torch.no_grad():  # make positions and tokens matter
        t.pos_embed.normal_()
        t.mask_token.normal_()
    return t


def test_readout_shapes_at_non_square_resolution(tower):
    out = split_tokens(tower.forward_features(torch.rand(2, 3, 14 * 5, 14 * 9)), 5, 9)
    assert out.cls_alt.shape == (2, 192)
    assert out.cls_syn.shape == (2, 192)
    assert out.patch_tokens.shape == (2, 5, 9, 192)


def test_tower_keeps_timms_contract(tower):
    x = torch.rand(2, 3, 56, 84)
    tokens = tower.forward_features(x)
    assert tokens.shape == (2, 2 + 4 * 6, 192)
    out = tower(x)
    assert isinstance(out, torch.Tensor) and torch.equal(out, tokens[:, 0])  # forward: a tensor (CLS1 pooled)
    final, inter = tower.forward_intermediates(x, indices=1, output_fmt="NLC", return_prefix_tokens=True)
    assert torch.allclose(final, tokens, atol=1e-6) and inter[0][0].shape == (2, 24, 192)
    model = tips.create_model("tiny", **{"vision.depth": 2})
    model.vision.load_state_dict(tower.state_dict())
    f = model.eval().encode_image(x)
    assert torch.equal(f.patch_tokens, tokens[:, 2:].reshape(2, 4, 6, 192)) and torch.equal(f.cls_syn, tokens[:, 1])


def test_size_not_multiple_of_patch_is_rejected_with_a_suggestion(tower):
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        tower.forward_features(torch.rand(1, 3, 100, 112))


def test_position_resampling_is_bilinear_antialiased_to_explicit_size():
    grid = torch.randn(1, 16 * 16, 8)
    out = resample_pos_grid(grid, (7, 11))
    ref = F.interpolate(grid.reshape(1, 16, 16, 8).permute(0, 3, 1, 2), size=(7, 11), mode="bilinear",
                        align_corners=False, antialias=True).permute(0, 2, 3, 1).reshape(1, 77, 8)
    assert torch.equal(out, ref)
    bicubic = F.interpolate(grid.reshape(1, 16, 16, 8).permute(0, 3, 1, 2), size=(7, 11), mode="bicubic",
                            align_corners=False, antialias=True).permute(0, 2, 3, 1).reshape(1, 77, 8)
    assert (out - bicubic).abs().max() > 1e-3  # the check above can tell the two apart
    assert torch.equal(resample_pos_grid(grid, (16, 16)), grid)  # native grid: untouched


def test_positions_are_added_to_patches_only(tower):
    x = torch.rand(1, 3, 224, 224)
    tokens = tower.embed(x)
    patches = tower.patch_embed(x).reshape(1, 256, -1)
    assert torch.allclose(tokens[:, 2:], patches + tower.pos_embed, atol=1e-6)
    assert torch.equal(tokens[:, 0], tower.cls_token[:, 0])
    assert torch.equal(tokens[:, 1], tower.reg_token[:, 0])


def test_mask_replaces_patch_embedding_before_positions(tower):
    x = torch.rand(2, 3, 224, 224)
    mask = torch.zeros(2, 256, dtype=torch.bool)
    mask[0, 5] = True
    tokens = tower.embed(x, mask)
    expected = tower.mask_token[0] + tower.pos_embed[0, 5]
    assert torch.allclose(tokens[0, 2 + 5], expected, atol=1e-6)
    assert torch.equal(tokens[1], tower.embed(x[1:])[0])  # unmasked image unaffected
    with pytest.raises(ValueError, match="patch_mask has shape"):
        tower.embed(x, mask[:, :10])


def test_intermediate_layers_with_and_without_final_norm(tower):
    x = torch.rand(1, 3, 112, 168)
    last = split_tokens(tower.forward_features(x), 8, 12)
    normed = tower.intermediate_layers(x, indices=1, norm=True)[0]
    raw = tower.intermediate_layers(x, indices=[1], norm=False)[0]
    assert torch.allclose(normed.patch_tokens, last.patch_tokens, atol=1e-5)
    assert torch.allclose(normed.cls_syn, last.cls_syn, atol=1e-5)
    assert not torch.allclose(raw.patch_tokens, last.patch_tokens, atol=1e-3)
    assert len(tower.intermediate_layers(x, indices=2)) == 2


def test_gradient_checkpointing_gives_the_same_output_and_gradients():
    torch.manual_seed(0)
    cfg = get_variant("tiny", **{"vision.depth": 2}).vision
    a = build_vision_tower(cfg)
    b = build_vision_tower(cfg)
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    x = torch.rand(2, 3, 56, 56)
    la, lb = a.forward_features(x)[:, 2:].square().sum(), b.forward_features(x)[:, 2:].square().sum()
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb)
    assert torch.allclose(a.blocks[0].attn.qkv.weight.grad, b.blocks[0].attn.qkv.weight.grad, atol=1e-5)


@pytest.mark.parametrize("variant,hidden,first", [("so400m14", 4304, 4304), ("g14", 4096, 8192)])
def test_official_mlp_widths_survive_float_ratios(variant, hidden, first):
    cfg = get_variant(variant, **{"vision.depth": 1}).vision
    assert cfg.mlp_hidden == hidden
    t = build_vision_tower(cfg)
    assert t.blocks[0].mlp.fc1.weight.shape == (first, cfg.width)
    assert t.blocks[0].mlp.fc2.weight.shape == (cfg.width, hidden)


def test_swiglu_gates_first_half_with_silu():
    cfg = get_variant("tiny", **{"vision.depth": 1, "vision.ffn": "swiglu", "vision.mlp_hidden": 40}).vision
    mlp = build_vision_tower(cfg).blocks[0].mlp
    x = torch.randn(3, cfg.width)
    h = mlp.fc1(x)
    expected = mlp.fc2(F.silu(h[:, :40]) * h[:, 40:])
    assert torch.allclose(mlp(x), expected, atol=1e-6)


def test_model_parameter_counts_match_the_official_table():
    # The official README counts parameters with a 16x16 position grid: S/14 21.6 M, B/14 85.7 M.
    for variant, millions in (("s14", 21.6), ("b14", 85.7)):
        cfg = get_variant(variant, **{"vision.pos_grid": 16}).vision
        n = sum(p.numel() for n_, p in build_vision_tower(cfg).named_parameters() if n_ != "mask_token")
        assert abs(n / 1e6 - millions) < 0.1, (variant, n)


def test_tips_similarity_uses_cls_temperature():
    model = tips.create_model("tiny", **{"vision.depth": 1, "text.depth": 1}).eval()
    x = torch.rand(2, 3, 56, 56)
    logits = model.similarity(x, ["a red ball", "a blue cube", "sky"])
    assert logits.shape == (2, 3)
    assert logits.abs().max() <= 1 / 0.07 + 1e-4
    model.set_temperatures(0.01, None)
    assert model.temperature == pytest.approx(0.01)
    assert model.temperature_syn is None
