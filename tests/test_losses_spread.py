"""Matryoshka and spread-out (GOR, KoLeo) loss terms against values computed by hand."""

import math

import pytest
import torch

from tips.losses import (
    ContrastiveLoss,
    GlobalOrthogonalRegularizer,
    KoLeoLoss,
    MatryoshkaContrastiveLoss,
    build_spread_loss,
)


def test_gor_is_squared_mean_cosine_when_second_moment_is_below_one_over_d():
    # cosines between different rows: 0, -1, 0 (each twice) → M1 = -1/3, M2 = 1/3 < 1/2
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    loss, stats = GlobalOrthogonalRegularizer()(x)
    assert loss.item() == pytest.approx(1 / 9)
    assert stats["gor_mean_cos"].item() == pytest.approx(-1 / 3)
    assert stats["gor_second_moment"].item() == pytest.approx(1 / 3)


def test_gor_adds_the_second_moment_excess_over_one_over_d_and_ignores_norms():
    # rows e1, 3·e1, e2 in R^4: cosines 1, 0, 0 → M1 = 1/3, M2 = 1/3 > 1/4 → 1/9 + 1/12
    x = torch.zeros(3, 4)
    x[0, 0], x[1, 0], x[2, 1] = 1.0, 3.0, 1.0
    x.requires_grad_(True)
    loss, _ = GlobalOrthogonalRegularizer()(x)
    assert loss.item() == pytest.approx(7 / 36)
    loss.backward()
    assert x.grad.abs().sum() > 0


def test_koleo_is_minus_mean_log_nearest_neighbour_distance():
    # nearest neighbours: row0 → row1 (distance √0.8), row1 → row2 (√0.4), row2 → row1 (√0.4)
    x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]])
    loss, stats = KoLeoLoss()(x)
    expected = -(0.5 * math.log(0.8) + math.log(0.4)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["koleo_nn_distance"].item() == pytest.approx((math.sqrt(0.8) + 2 * math.sqrt(0.4)) / 3, rel=1e-5)
    assert stats["koleo_min_distance"].item() == pytest.approx(math.sqrt(0.4), rel=1e-5)


def test_koleo_pushes_nearest_neighbours_apart():
    x = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]], requires_grad=True)
    loss, _ = KoLeoLoss()(x)
    loss.backward()
    with torch.no_grad():
        moved = x - 0.01 * x.grad
    assert KoLeoLoss()(moved)[0] < loss


def test_matryoshka_is_the_weighted_mean_of_the_contrastive_loss_on_each_prefix():
    # width 1: normalised rows ±1 → each row's CE is log(1 + e^-2) (scale 1);
    # width 2: cosines ±1/√10 → log(1 + e^(-2/√10)).
    image = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    text = torch.tensor([[1.0, 3.0], [-1.0, -3.0]])
    scale = torch.tensor(0.0)
    full, one = math.log(1 + math.exp(-2 / math.sqrt(10))), math.log(1 + math.exp(-2))
    loss, stats = MatryoshkaContrastiveLoss(ContrastiveLoss(), dims=(2, 1), weights=(1.0, 3.0))(image, text, scale)
    assert loss.item() == pytest.approx((full + 3 * one) / 4, rel=1e-6)
    assert stats["contrastive@2"].item() == pytest.approx(full, rel=1e-6)
    assert stats["contrastive@1"].item() == pytest.approx(one, rel=1e-6)


def test_matryoshka_with_the_full_width_only_equals_the_wrapped_loss():
    gen = torch.Generator().manual_seed(0)
    image, text = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    scale, bias = torch.tensor(2.0), torch.tensor(-1.0)
    for kind in ("softmax", "sigmoid"):
        base = ContrastiveLoss(kind)
        got, _ = MatryoshkaContrastiveLoss(base, dims=[8])(image, text, scale, bias)
        assert torch.allclose(got, base(image, text, scale, bias))


def test_matryoshka_and_spread_refuse_bad_settings():
    with pytest.raises(ValueError, match="exceed the embedding width 8"):
        MatryoshkaContrastiveLoss(ContrastiveLoss(), dims=[16])(torch.randn(2, 8), torch.randn(2, 8), torch.tensor(0.0))
    with pytest.raises(ValueError, match="give one per width"):
        MatryoshkaContrastiveLoss(ContrastiveLoss(), dims=[8, 4], weights=[1.0])
    with pytest.raises(ValueError, match="loss.spread must be one of"):
        build_spread_loss("uniform")
    assert build_spread_loss("none") is None
    with pytest.raises(ValueError, match="B >= 2"):
        KoLeoLoss()(torch.randn(1, 8))
