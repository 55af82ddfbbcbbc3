"""tips-merge: averaging towers, temperatures in log space, heads, and refusing mismatched architectures."""

import math

import pytest
import torch

import tips
from tips.cli.merge import main
from tips.inference.merge import MergeMismatch, merge


def small(seed: int, **overrides) -> tips.TIPS:
    torch.manual_seed(seed)
    overrides = {"vision.depth": 1, "text.depth": 1, "text.vocab_size": 1000, **overrides}
    return tips.TIPS(tips.get_variant("tiny", **overrides)).eval()  # no tokenizer: building one costs seconds


def outputs(model: tips.TIPS) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 1000, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.encode_image(x).cls_alt, model.encode_text(ids, torch.zeros(2, 6, dtype=torch.bool))


def test_merging_identical_checkpoints_gives_the_same_outputs(tmp_path):
    model = small(0)
    tips.save(model, tmp_path / "a")
    tips.save(model, tmp_path / "b")
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--weights", "3", "1", "-o", str(tmp_path / "m")]) == 0
    merged = tips.load(tmp_path / "m")
    for got, want in zip(outputs(merged), outputs(model)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_merge_is_the_weighted_mean_with_temperatures_averaged_in_log_space(tmp_path):
    a, b = small(0), small(1)
    a.set_temperatures(0.01, 0.1)
    b.set_temperatures(0.04, 0.1)
    tips.save(a, tmp_path / "a")
    tips.save(b, tmp_path / "b")
    merged, heads = merge([tmp_path / "a", tmp_path / "b"], weights=[1, 3])
    assert heads == {}
    key = "vision.blocks.0.mlp.fc1.weight"
    want = 0.25 * a.state_dict()[key] + 0.75 * b.state_dict()[key]
    torch.testing.assert_close(merged.state_dict()[key], want)
    assert merged.temperature == pytest.approx(math.exp(0.25 * math.log(0.01) + 0.75 * math.log(0.04)), rel=1e-5)
    assert merged.temperature_syn == pytest.approx(0.1, rel=1e-5)


def test_merge_refuses_a_width_mismatch_naming_the_first_differing_tensor(tmp_path):
    tips.save(small(0), tmp_path / "a")
    tips.save(small(0, **{"vision.width": 128, "vision.heads": 2}), tmp_path / "b")
    with pytest.raises(MergeMismatch, match=r"tensor 'vision.cls_token': .* \(1, 1, 192\).* \(1, 1, 128\)"):
        merge([tmp_path / "a", tmp_path / "b"])
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "m")]) == 1
    assert not (tmp_path / "m").exists()


def test_merge_with_heads_averages_the_training_exports_heads(tmp_path):
    ckpts = []
    for seed in (0, 1):
        step = tmp_path / f"run{seed}" / "checkpoints" / "step-00000010"
        tips.save(small(seed), step / "export",
                  extra_tensors={"heads.dino_head.last.weight": torch.full((4, 3), float(seed))})
        ckpts.append(step)
    merged, heads = merge(ckpts, with_heads=True)
    torch.testing.assert_close(heads["heads.dino_head.last.weight"], torch.full((4, 3), 0.5))
    tips.save(small(0), tmp_path / "plain")
    with pytest.raises(MergeMismatch, match="holds no heads"):
        merge([ckpts[0], tmp_path / "plain"], with_heads=True)
