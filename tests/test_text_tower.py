"""The TIPS text tower: embedding scale, sinusoids, padding semantics, pooling."""

import math

import torch

from tips.models import get_variant
from tips.models.text import build_text_tower, sinusoidal_positions


def _tower(depth=2):
    torch.manual_seed(0)
    return build_text_tower(get_variant("tiny", **{"text.depth": depth, "text.vocab_size": 100}).text).eval()


def test_sinusoids_are_concatenated_sin_then_cos_with_geometric_timescales():
    table = sinusoidal_positions(64, 10)
    half = 5
    for p in (0, 1, 7, 63):
        for k in range(half):
            omega = math.exp(-k * math.log(1e4) / (half - 1))
            assert abs(table[p, k] - math.sin(p * omega)) < 1e-6
            assert abs(table[p, half + k] - math.cos(p * omega)) < 1e-6
    assert sinusoidal_positions(4, 7).shape == (4, 7)
    assert torch.all(sinusoidal_positions(4, 7)[:, -1] == 0)


def test_padded_positions_do_not_change_the_embedding():
    tower = _tower()
    ids = torch.randint(1, 100, (2, 12))
    padding = torch.zeros(2, 12, dtype=torch.bool)
    padding[:, 7:] = True
    other = ids.clone()
    other[:, 7:] = torch.randint(1, 100, (2, 5))
    a, b = tower(ids, padding), tower(other, padding)
    assert torch.allclose(a, b, atol=1e-6)
    # and equals the same text without the padded tail
    c = tower(ids[:, :7], padding[:, :7])
    assert torch.allclose(a, c, atol=1e-5)


def test_padding_accepts_int_masks_and_empty_rows_give_zero_not_nan():
    tower = _tower()
    ids = torch.randint(1, 100, (2, 6))
    padding = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    out = tower(ids, padding)
    assert torch.isfinite(out).all()
    assert torch.all(out[1] == 0)
    assert torch.allclose(out[0], tower(ids[:1], padding[:1].bool())[0], atol=1e-6)


def test_embedding_is_scaled_by_sqrt_width():
    tower = _tower(depth=0)
    ids = torch.tensor([[5]])
    tokens = tower.forward_tokens(ids, torch.zeros(1, 1, dtype=torch.bool))
    x = tower.token_embedding.weight[5] * math.sqrt(192) + sinusoidal_positions(1, 192)[0]
    assert torch.allclose(tokens[0, 0], tower.ln_final(x), atol=1e-5)


def test_out_of_vocabulary_ids_get_a_clear_error():
    tower = _tower()
    try:
        tower(torch.tensor([[100]]), torch.zeros(1, 1, dtype=torch.bool))
    except ValueError as e:
        assert "token id out of range" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_trailing_padding_columns_are_trimmed_without_changing_the_result():
    tower = _tower()
    ids = torch.randint(1, 100, (3, 64))
    padding = torch.ones(3, 64, dtype=torch.bool)
    padding[0, :5] = False
    padding[1, :9] = False
    padding[2, :2] = False
    full = tower.forward_tokens(ids, padding)  # untrimmed path
    keep = (~padding).unsqueeze(-1).float()
    pooled_full = (full * keep).sum(1) / (keep.sum(1) + 1e-8)
    assert torch.allclose(tower(ids, padding), pooled_full, atol=1e-5)
