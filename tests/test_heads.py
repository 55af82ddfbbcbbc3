"""The DINO / iBOT projection head and the MAE pixel decoder."""

import pytest
import torch
from torch.nn.utils import parametrize

from tips.models.heads import PixelDecoder, ProjectionHead, sincos_2d


def small_head(out_dim: int = 64, nlayers: int = 3) -> ProjectionHead:
    return ProjectionHead(32, out_dim, hidden_dim=48, bottleneck_dim=16, nlayers=nlayers)


@pytest.mark.parametrize("nlayers", [1, 2, 3])
def test_projection_head_maps_any_leading_shape_to_prototype_logits(nlayers):
    head = small_head(nlayers=nlayers)
    assert head(torch.randn(5, 32)).shape == (5, 64)
    assert head(torch.randn(2, 6, 32)).shape == (2, 6, 64)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == nlayers and linears[-1].out_features == 16


def test_projection_head_mlp_is_trunc_normal_with_zero_biases():
    head = ProjectionHead(256, 8, hidden_dim=512, bottleneck_dim=256)
    for layer in (m for m in head.mlp if isinstance(m, torch.nn.Linear)):
        assert torch.all(layer.bias == 0)
        # Cut at ±2 in absolute units (the DINO convention), so in effect N(0, 0.02).
        assert layer.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_prototype_layer_is_weight_normalised_with_trainable_unit_gain():
    head = small_head()
    assert parametrize.is_parametrized(head.last_layer, "weight")
    gain = head.last_layer.parametrizations.weight.original0
    assert gain.shape == (64, 1) and gain.requires_grad and torch.all(gain == 1)
    # Unit gain and unit-norm bottleneck: every logit is a cosine, so |logit| <= 1 at init.
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(64), atol=1e-5)
    assert head(torch.randn(7, 32) * 100).abs().max().item() <= 1 + 1e-5
    head(torch.randn(3, 32)).sum().backward()
    assert gain.grad is not None and gain.grad.abs().sum() > 0
    names = [n for n, _ in head.named_parameters() if "last_layer" in n]
    assert sorted(names) == [
        "last_layer.parametrizations.weight.original0",
        "last_layer.parametrizations.weight.original1",
    ]


def test_projection_head_is_finite_under_bf16_autocast():
    head = small_head()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(torch.randn(4, 32))
    assert torch.isfinite(out.float()).all()


def test_sincos_positions_are_fixed_and_distinct_for_any_grid():
    pos = sincos_2d((3, 5), 16)
    assert pos.shape == (15, 16)
    origin = torch.tensor([0.0] * 4 + [1.0] * 4)  # sin 0, cos 0 for the row, then for the column
    assert torch.equal(pos[0], torch.cat([origin, origin]))
    assert torch.unique(pos, dim=0).shape[0] == 15
    # Row index lives in the first half, column index in the second.
    assert torch.equal(pos[1, :8], pos[0, :8]) and not torch.equal(pos[5, :8], pos[0, :8])
    assert torch.equal(pos[5, 8:], pos[0, 8:])


def test_pixel_decoder_predicts_pixels_per_patch_for_a_non_square_grid():
    decoder = PixelDecoder(embed_dim=24, patch_size=4, decoder_dim=32, depth=2, heads=4)
    tokens, mask = torch.randn(2, 12, 24), torch.rand(2, 12) < 0.5
    assert decoder(tokens, mask, (3, 4)).shape == (2, 12, 4 * 4 * 3)
    assert not any("pos" in name for name, _ in decoder.named_parameters())
    with pytest.raises(ValueError):
        decoder(tokens, mask, (4, 4))


def test_pixel_decoder_ignores_encoder_tokens_at_masked_positions():
    decoder = PixelDecoder(embed_dim=24, patch_size=2, decoder_dim=32, depth=2, heads=4).eval()
    tokens = torch.randn(1, 6, 24)
    mask = torch.tensor([[True, False, True, False, False, True]])
    edited = tokens.clone()
    edited[mask] = torch.randn(3, 24)
    assert torch.allclose(decoder(tokens, mask, (2, 3)), decoder(edited, mask, (2, 3)), atol=1e-6)
    edited[0, 1] += 1.0  # a visible token does matter
    assert not torch.allclose(decoder(tokens, mask, (2, 3)), decoder(edited, mask, (2, 3)))
