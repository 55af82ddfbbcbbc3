"""DPT heads: ``tips.load_head(...).predict(tips.load(vision), x)`` equals the official decoder on the official tower.

Ground truth is tips_reference (the official image tower and a plain re-implementation of the official decoders
and of ``load_decoder_weights``, written from their published description). Random, non-symmetric weights; files written in the
Scenic zip and the legacy flat layouts; the native size and a non-square one; all three tasks; max |Δ| ≤ 1e-4.
A second group shows that each classic conversion mistake moves the output far beyond that tolerance, so the
parity tests would catch it.
"""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tips
from tips_reference import official_dpt as R
from tips_reference.official_torch import OfficialVisionEncoder, randomize_, save_official_npz
from tips.formats import dpt as fmt
from tips.models.dpt import DenseHead, build_head, dpt_layers

ATOL = 1e-4
WIDTH, DEPTH, HEADS, HIDDEN, PATCH, GRID = 32, 12, 2, 64, 14, 4  # a B/14-shaped tower (12 blocks), tiny width
FUSION = 32  # the official width is 256; a narrower fusion keeps the tests fast and is inferred from shapes alike
SIZES = [(GRID * PATCH, GRID * PATCH), (42, 70)]  # native square, non-square
TASKS = {"segmentation": 7, "depth": 256, "normals": 3}


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    """(official reference tower, the same weights loaded by tips.load)."""
    encoder = randomize_(OfficialVisionEncoder(WIDTH, DEPTH, HEADS, HIDDEN, "mlp", PATCH, GRID), seed=7)
    path = save_official_npz(encoder, tmp_path_factory.mktemp("tower") / "t_vision.npz")
    return encoder, tips.load(path, heads=HEADS)


def _decoder(task: str, seed: int = 11) -> R.OfficialDecoder:
    return R.randomize_decoder_(R.OfficialDecoder(task, WIDTH, TASKS[task], channels=FUSION), seed=seed)


def _images(size, seed=0, batch=1) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_layer_indices_follow_the_official_table_and_formula() -> None:
    assert [dpt_layers(d) for d in (12, 24, 27, 40)] == [
        (2, 5, 8, 11), (5, 11, 17, 23), (6, 13, 20, 26), (9, 19, 29, 39)]
    assert dpt_layers(4) == (0, 1, 2, 3) and dpt_layers(6) == (1, 2, 4, 5)
    with pytest.raises(ValueError, match="at least 4 blocks"):
        dpt_layers(3)


@pytest.mark.parametrize("layout", ["scenic", "legacy"])
@pytest.mark.parametrize("task", list(TASKS))
def test_loaded_head_predicts_like_the_official_decoder(tower, tmp_path, task, layout) -> None:
    encoder, model = tower
    decoder = _decoder(task)
    path = tmp_path / ("head.zip" if layout == "scenic" else "head.npz")
    (R.save_scenic_zip if layout == "scenic" else R.save_legacy_flat)(decoder, path)
    head = tips.load_head(path)
    assert head.task == task and head.cfg.out_channels == TASKS[task]
    for i, size in enumerate(SIZES):
        x = _images(size, seed=i)
        with torch.no_grad():
            want = R.reference_predict(decoder, encoder, x)
        got = head.predict(model, x)
        assert got.shape == (1, 1 if task == "depth" else TASKS[task], *size)
        assert _max_diff(got, want) <= ATOL
    if task == "normals":
        assert torch.allclose(got.norm(dim=1), torch.ones(()), atol=1e-5)


def test_reference_loader_reads_both_layouts_back_to_the_same_weights(tmp_path) -> None:
    decoder = _decoder("depth")
    for path, save in ((tmp_path / "h.zip", R.save_scenic_zip), (tmp_path / "h.npz", R.save_legacy_flat)):
        save(decoder, path)
        loaded = R.load_decoder_weights(R.OfficialDecoder("depth", WIDTH, 256, channels=FUSION), path)
        for k, v in decoder.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k


# ----------------------------------------------------------------------------------------------- mistakes
def _shim(**overrides):
    """A stand-in for torch.nn.functional inside the reference, with some functions replaced."""
    return types.SimpleNamespace(**{**{n: getattr(F, n) for n in dir(F) if not n.startswith("_")}, **overrides})


def _interp_align_false(x, *a, **kw):
    kw["align_corners"] = False if kw.get("mode") == "bilinear" else kw.get("align_corners")
    return F.interpolate(x, *a, **kw)


def _rot_resize(dec):  # the loader forgot the 180° rotation of the transposed convs
    for i in (0, 1):
        w = dec.dpt.reassemble.resize_layers[i].weight
        w.data = w.data.flip(2, 3)


def _swap_in_out(dec):  # (in, out) of the square transposed-conv kernels swapped: shapes cannot catch it
    w = dec.dpt.reassemble.resize_layers[0].weight
    w.data = w.data.transpose(0, 1).contiguous()


def _cls_first(dec):  # readout as cls ⊕ patch instead of patch ⊕ cls
    for lin in dec.dpt.reassemble.readout_projects:
        lin.weight.data = torch.cat([lin.weight.data[:, WIDTH:], lin.weight.data[:, :WIDTH]], 1)


MISTAKES = {
    "no_transposed_conv_flip": ("segmentation", _rot_resize, {}, None),
    "transposed_conv_in_out_swapped": ("segmentation", _swap_in_out, {}, None),
    "readout_cls_first": ("segmentation", _cls_first, {}, None),
    "erf_gelu_in_readout": ("segmentation", None, {"gelu": lambda x, approximate="none": F.gelu(x)}, None),  # small
    "align_corners_false": ("segmentation", None, {"interpolate": _interp_align_false}, None),
    "last_four_layers": ("segmentation", None, {}, [8, 9, 10, 11]),
    "depth_without_relu": ("depth", None, {}, None),
    "depth_shift_0.1": ("depth", None, {}, None),
}
DECODER_ATTRS = {"depth_without_relu": {"depth_relu": False}, "depth_shift_0.1": {"depth_shift": 0.1}}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_conversion_mistake_moves_the_output_beyond_ten_times_the_tolerance(tower, tmp_path, monkeypatch, mistake) -> None:
    task, edit, functional, layers = MISTAKES[mistake]
    encoder, model = tower
    decoder = _decoder(task)
    if mistake == "erf_gelu_in_readout":  # |GELU_erf − GELU_tanh| ≤ 5e-4: amplify what follows the readout
        for conv in decoder.dpt.reassemble.out_projections:
            conv.weight.data *= 20
    R.save_scenic_zip(decoder, tmp_path / "h.zip")
    got = tips.load_head(tmp_path / "h.zip").predict(model, _images(SIZES[1]))
    wrong = copy.deepcopy(decoder)
    if edit is not None:
        edit(wrong)
    if functional:
        monkeypatch.setattr(R, "F", _shim(**functional))
    if layers is not None:
        monkeypatch.setattr(R, "official_layers", lambda depth: layers)
    for name, value in DECODER_ATTRS.get(mistake, {}).items():
        monkeypatch.setattr(R.OfficialDecoder, name, value)
    with torch.no_grad():
        bad = R.reference_predict(wrong, encoder, _images(SIZES[1]))
    assert _max_diff(got, bad) > 10 * ATOL


def test_our_depth_shift_and_project_relu_options_change_the_output(tower, tmp_path) -> None:
    """probe3d's +0.1 shift and transformers' ReLU after project are options, off for official heads."""
    encoder, model = tower
    R.save_scenic_zip(_decoder("depth"), tmp_path / "h.zip")
    head = tips.load_head(tmp_path / "h.zip")
    x = _images(SIZES[0])
    base = head.predict(model, x)
    for change in ({"depth_shift": 0.1}, {"project_relu": True}):
        other = DenseHead(type(head.cfg)(**{**head.cfg.to_dict(), **change}))
        other.load_state_dict(head.state_dict())
        assert _max_diff(other.eval().predict(model, x), base) > 100 * ATOL


# ----------------------------------------------------------------------------------------------- files and errors
def test_task_width_channels_and_classes_come_from_the_file(tmp_path) -> None:
    decoder = R.randomize_decoder_(R.OfficialDecoder("segmentation", WIDTH, 5, channels=24, post=[3, 6, 12, 20]), 1)
    R.save_legacy_flat(decoder, tmp_path / "seg.npz")  # legacy: the head is "segmentation_head."
    head = tips.load_head(tmp_path / "seg.npz")
    assert (head.task, head.cfg.width, head.cfg.channels, head.cfg.fusion_width, head.cfg.out_channels) == (
        "segmentation", WIDTH, (3, 6, 12, 20), 24, 5)
    R.save_scenic_zip(_decoder("depth"), tmp_path / "d.zip", head_name="pixel_depth_classif", prefix="")
    assert tips.load_head(tmp_path / "d.zip", task="depth").task == "depth"
    with pytest.raises(ValueError, match="task='normals'.*depth head"):
        tips.load_head(tmp_path / "d.zip", task="normals")


def test_bad_files_raise_errors_naming_the_key_and_shapes(tmp_path) -> None:
    arrays = R.scenic_arrays(_decoder("segmentation"))
    key = "dpt/convs_2/kernel"
    bad = dict(arrays, **{key: arrays[key][..., :-1]})
    np.savez(tmp_path / "shape.npz", **bad)
    with pytest.raises(ValueError, match=r"dpt\.convs\.2\.weight has shape \(31, 16, 3, 3\).*expects \(32, 16, 3, 3\)"):
        tips.load_head(tmp_path / "shape.npz")
    np.savez(tmp_path / "extra.npz", **arrays, **{"dpt/reassemble_blocks/resize_layers_2/kernel": arrays[key]})
    with pytest.raises(KeyError, match="resize_layers_2"):
        tips.load_head(tmp_path / "extra.npz")
    np.savez(tmp_path / "missing.npz", **{k: v for k, v in arrays.items() if "fusion_blocks_3/Conv_0/bias" not in k})
    with pytest.raises(KeyError, match=r"missing keys \['dpt\.fusion_blocks\.3\.out_conv\.bias'\]"):
        tips.load_head(tmp_path / "missing.npz")
    np.savez(tmp_path / "objects.npz", **{"dpt/project/kernel": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="without unpickling"):
        tips.load_head(tmp_path / "objects.npz")


def test_official_names_resolve_and_fail_clearly_offline(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TIPS_CACHE", str(tmp_path))
    monkeypatch.setenv("TIPS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"tips_v2_so400m14_normals_dpt\.zip.*offline"):
        tips.load_head("tips-v2-so14-normals")
    with pytest.raises(FileNotFoundError, match="not an official head name"):
        tips.load_head("tips-v2-b14-flow")


def test_predict_names_sizes_that_are_not_multiples_of_the_patch(tower) -> None:
    _, model = tower
    head = build_head("depth", WIDTH).eval()
    with pytest.raises(ValueError, match="50x70 is not a multiple of the patch size 14"):
        head.predict(model, torch.rand(1, 3, 50, 70))
    with pytest.raises(ValueError, match="width 48"):
        build_head("depth", 48).predict(model, torch.rand(1, 3, 56, 56))


# ----------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("task", list(TASKS))
def test_export_official_round_trips_through_the_official_loader(tower, tmp_path, task) -> None:
    encoder, model = tower
    head = R.randomize_decoder_(build_head(task, WIDTH, TASKS[task], fusion=FUSION), seed=3)
    zip_path = fmt.export_official_head(head, tmp_path, name="mine")
    assert zip_path.name == "mine.zip" and all("/" in k for k in np.load(zip_path).files)
    reference = R.load_decoder_weights(R.OfficialDecoder(task, WIDTH, TASKS[task], channels=FUSION), zip_path)
    x = _images(SIZES[1], seed=4)
    with torch.no_grad():
        want = R.reference_predict(reference, encoder, x)
    assert _max_diff(head.predict(model, x), want) <= ATOL
    assert _max_diff(tips.load_head(zip_path).predict(model, x), want) <= ATOL
    folder = fmt.save_pretrained_head(head, tmp_path / "ours")
    assert _max_diff(tips.load_head(folder).predict(model, x), want) <= ATOL
    assert tips.load_head(folder / "model.safetensors").task == task


def test_tips_export_head_command_writes_both_formats(tmp_path) -> None:
    from tips.cli.export import main

    R.save_legacy_flat(_decoder("normals"), tmp_path / "n.npz")
    assert main(["--head", str(tmp_path / "n.npz"), "--format", "official", "-o", str(tmp_path / "off")]) == 0
    assert main(["--head", str(tmp_path / "off" / "tips_dpt_normals.zip"), "--format", "pretrained",
                 "--out", str(tmp_path / "ours")]) == 0
    a, b = tips.load_head(tmp_path / "n.npz"), tips.load_head(tmp_path / "ours")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# ----------------------------------------------------------------------------------------------- peers, presets
def test_decoder_matches_transformers_tipsv2_dpt_on_random_weights() -> None:
    """transformers' port (its neck + decoder, no depth ReLU) on the same weights and the same tokens, its module
    names mapped by the library (tips.formats.hf_modules.dpt_module_names_to_ours)."""
    from transformers import Tipsv2DptConfig
    from transformers.models.tipsv2_dpt.modeling_tipsv2_dpt import Tipsv2DptDecoder, Tipsv2DptNeck

    from tips.formats.hf_modules import dpt_module_names_to_ours

    cfg = Tipsv2DptConfig(
        backbone_config={"model_type": "tipsv2_vision_model", "hidden_size": WIDTH, "num_hidden_layers": 4,
                         "num_attention_heads": HEADS, "intermediate_size": HIDDEN, "patch_size": PATCH},
        neck_hidden_sizes=[WIDTH // 8, WIDTH // 4, WIDTH // 2, WIDTH])
    neck, dec = Tipsv2DptNeck(cfg).eval(), Tipsv2DptDecoder(cfg, 7).eval()
    torch.manual_seed(5)
    for p in [*neck.parameters(), *dec.parameters()]:  # ~unit-variance activations through the fusion width 256
        p.data.normal_(0, 1 / p[0].numel() ** 0.5 if p.ndim > 1 else 0.2)
    sd = {**{f"neck.{k}": v for k, v in neck.state_dict().items()}, **{f"decoder.{k}": v for k, v in dec.state_dict().items()}}
    head = fmt.load_state_strict(build_head("segmentation", WIDTH, 7), dpt_module_names_to_ours(sd), "transformers")
    h, w = 3, 5
    levels = [(torch.randn(2, WIDTH), torch.randn(2, h, w, WIDTH)) for _ in range(4)]
    hidden = [torch.cat([c[:, None], torch.zeros(2, 1, WIDTH), p.reshape(2, h * w, WIDTH)], 1) for c, p in levels]
    with torch.no_grad():
        want = dec(neck(hidden, patch_height=h, patch_width=w)[-1])
        assert want.shape[:2] == (2, 7) and want.abs().max() > 0.5  # a tolerance that means something
        assert _max_diff(head(levels), want) <= ATOL


def test_probe3d_preset_reads_tokens_before_the_final_norm(tower) -> None:
    encoder, model = tower
    assert build_head("normals", WIDTH, preset="probe3d").cfg.fusion_width == 512
    head = build_head("normals", WIDTH, preset="probe3d", fusion=FUSION).eval()
    assert head.cfg.out_channels == 4
    x = _images(SIZES[1])
    with torch.no_grad():
        levels = head.features(model, x)
        ref = R.intermediate_layers(encoder, x, list(dpt_layers(DEPTH)), norm=False)
        assert max(_max_diff(c, rc) for (c, _), (rc, _) in zip(levels, ref)) <= ATOL
        raw = head.decode(levels)
    assert raw.shape == (1, 4, 16 * 3, 16 * 5)
    out = head.predict(model, x)
    assert out.shape == (1, 3, *SIZES[1]) and torch.allclose(out.norm(dim=1), torch.ones(()), atol=1e-5)
