"""Mask generators: exact counts, reproducibility, block shapes, ratio ranges."""

import numpy as np
import pytest
import torch

from tips.data import MaskConfig, block_mask, make_mask, make_masks, num_masked_patches, random_mask


def test_num_masked_patches_is_round_of_ratio_times_n():
    assert num_masked_patches(256, 0.75) == 192
    assert num_masked_patches(49, 0.75) == 37  # round(36.75)
    assert num_masked_patches(16, 0.0) == 0


@pytest.mark.parametrize("n", [16, 49, 256, 1024])
def test_random_mask_has_exactly_round_ratio_trues(n):
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = random_mask(n, num_masked_patches(n, 0.75), rng)
        assert mask.dtype == torch.bool and mask.shape == (n,)
        assert int(mask.sum()) == round(0.75 * n)


def test_random_mask_accepts_a_torch_generator_and_is_reproducible():
    a = random_mask(256, 192, torch.Generator().manual_seed(3))
    b = random_mask(256, 192, torch.Generator().manual_seed(3))
    c = random_mask(256, 192, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(random_mask(256, 192, np.random.default_rng(5)), random_mask(256, 192, np.random.default_rng(5)))


def test_random_mask_is_uniform_over_positions():
    rng = np.random.default_rng(0)
    freq = torch.stack([random_mask(64, 16, rng) for _ in range(4000)]).float().mean(0)
    assert torch.allclose(freq, torch.full((64,), 0.25), atol=0.04)


@pytest.mark.parametrize("grid, ratio", [(16, 0.75), (16, 0.4), (7, 0.75), (14, 0.5)])
def test_block_mask_has_exactly_round_ratio_trues(grid, ratio):
    rng = np.random.default_rng(1)
    k = num_masked_patches(grid * grid, ratio)
    for _ in range(20):
        mask = block_mask(grid, grid, k, rng)
        assert mask.shape == (grid * grid,) and int(mask.sum()) == k


def _fraction_with_two_masked_neighbours(mask: torch.Tensor, grid: int) -> float:
    m = mask.view(grid, grid)
    padded = torch.nn.functional.pad(m.float()[None, None], (1, 1, 1, 1))[0, 0]
    neighbours = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
    return float((neighbours[m] >= 2).float().mean())


def test_block_mask_is_made_of_rectangles_not_scattered_patches():
    """At 40 % nearly every block-masked patch has >= 2 masked 4-neighbours; about half of random ones do."""
    rng = np.random.default_rng(2)
    blocks = np.mean([_fraction_with_two_masked_neighbours(block_mask(16, 16, 102, rng), 16) for _ in range(30)])
    scattered = np.mean([_fraction_with_two_masked_neighbours(random_mask(256, 102, rng), 16) for _ in range(30)])
    assert blocks > 0.9 and scattered < 0.6


def test_make_mask_with_a_ratio_range_draws_per_image_within_the_range():
    cfg = MaskConfig(mask_ratio=[0.5, 0.75])
    assert cfg.mask_ratio == (0.5, 0.75)
    rng = np.random.default_rng(0)
    counts = make_masks(cfg, 200, 16, 16, rng).sum(1)
    assert counts.min() >= 128 and counts.max() <= 192
    assert len(set(counts.tolist())) > 20  # a different ratio per image


def test_make_mask_block_shape_and_fixed_ratio():
    cfg = MaskConfig(mask_shape="block", mask_ratio=0.75)
    masks = make_masks(cfg, 8, 16, 16, np.random.default_rng(0))
    assert masks.shape == (8, 256) and masks.dtype == torch.bool
    assert (masks.sum(1) == 192).all()
    same_seed = [make_mask(cfg, 16, 16, np.random.default_rng(9)) for _ in range(2)]
    assert torch.equal(*same_seed)


def test_mask_config_rejects_bad_values():
    with pytest.raises(ValueError):
        MaskConfig(mask_shape="grid")
    with pytest.raises(ValueError):
        MaskConfig(mask_ratio=(0.8, 0.5))
    with pytest.raises(ValueError):
        MaskConfig(mask_ratio=1.5)
