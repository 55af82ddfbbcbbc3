"""transformers' ``tipsv2_dpt`` folders, both ways, against the installed transformers classes.

Read: a folder written by ``Tipsv2DptFor{Depth,Normal}Estimation`` / ``…ForSemanticSegmentation``
``.save_pretrained`` (random weights, every config field we honour off its default) loads with ``tips.load_head``
(the head) and ``tips.load`` (the backbone in the same file). Write: ``tips-export --model M --head H --format
transformers`` gives a folder that the transformers class ``.from_pretrained`` loads offline.

What is compared, like with like, on a non-square 42×70 batch (3×5 patches, not the stored 4×4 grid):
- at the fused resolution, transformers' forward output against our head on the same features: depth in metres
  (``predicted_depth`` vs :meth:`DenseHead.outputs` of the raw bins), raw normals (``normals``), segmentation logits
  (``logits``) vs :meth:`DenseHead.decode`;
- at the image size, :meth:`DenseHead.predict` against transformers' own post-processing where it computes the
  same thing: ``post_process_depth_estimation`` (bilinear resize of the depth) and
  ``post_process_semantic_segmentation(..., return_segmentation_scores=True)`` (bilinear resize of the logits).
  For normals transformers L2-normalises and then resizes, we resize and then normalise (unit vectors at every
  output pixel), so ``predict`` is compared with transformers' raw normals resized bilinearly then normalised.
Max |Δ| ≤ 1e-4 throughout.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import tips

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoImageProcessor,
    Tipsv2DptConfig,
    Tipsv2DptForDensePrediction,
    Tipsv2DptForDepthEstimation,
    Tipsv2DptForNormalEstimation,
    Tipsv2DptForSemanticSegmentation,
    Tipsv2DptImageProcessor,
)

from tips.cli.export import main as tips_export  # noqa: E402
from tips.formats import registry  # noqa: E402
from tips.formats.dpt import save_pretrained_head  # noqa: E402
from tips.formats.hf_dpt import export_transformers_dpt  # noqa: E402
from tips.models.dpt import build_head  # noqa: E402

ATOL = 1e-4
WIDTH, DEPTH, PATCH, SIZE = 32, 5, 14, (42, 70)
CLASSES = {"depth": Tipsv2DptForDepthEstimation, "normals": Tipsv2DptForNormalEstimation,
           "segmentation": Tipsv2DptForSemanticSegmentation}  # fmt: skip
TASK_FIELDS = {"depth": dict(num_depth_bins=10, min_depth=0.5, max_depth=3.0), "normals": {},
               "segmentation": dict(num_labels=5)}  # fmt: skip


def _dpt_config(swiglu: bool = False, **overrides) -> Tipsv2DptConfig:
    backbone = dict(model_type="tipsv2_vision_model", hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=2,
                    mlp_ratio=2, patch_size=PATCH, image_size=56, layerscale_value=0.5, use_swiglu_ffn=swiglu,
                    out_indices=[1, 3, 4, 5], reshape_hidden_states=False)  # fmt: skip
    kw = dict(backbone_config=backbone, neck_hidden_sizes=[8, 8, 16, 24], fusion_hidden_size=16)
    return Tipsv2DptConfig(**{**kw, **overrides})


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every tensor random and non-trivial (transformers zeroes the registers and sets layer scale to a constant);
    weights scaled by fan-in so activations stay near unit size and the 1e-4 tolerance is a tight one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "lambda1" in name:
                p.copy_(0.5 + 0.2 * noise)
            elif name.endswith(("layernorm.weight", "norm1.weight", "norm2.weight")):
                p.copy_(1 + 0.1 * noise)
            elif p.ndim > 1 and "embeddings" not in name:
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(0.3 * noise)
    return model.eval()


def _images(seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def _hf_fused(out, task: str) -> torch.Tensor:
    """transformers' output at the fused resolution: depth (B, 1, h', w') in metres, raw normals, logits."""
    return {"depth": lambda: out.predicted_depth[:, None], "normals": lambda: out.normals,
            "segmentation": lambda: out.logits}[task]()  # fmt: skip


def _hf_at_image_size(hf_out, task: str, processor) -> torch.Tensor:
    sizes = [SIZE] * len(_hf_fused(hf_out, task))
    if task == "depth":
        return torch.stack([r["predicted_depth"] for r in processor.post_process_depth_estimation(hf_out, sizes)])[:, None]
    if task == "segmentation":
        results = processor.post_process_semantic_segmentation(hf_out, sizes, return_segmentation_scores=True)
        return torch.stack([r.segmentation_scores for r in results])
    return F.normalize(F.interpolate(hf_out.normals, size=SIZE, mode="bilinear", align_corners=False), dim=1)


def _assert_head_matches(head, model, hf, task: str, processor) -> None:
    x = _images()
    with torch.no_grad():
        hf_out = hf(pixel_values=x)
        raw = head.decode(head.features(model, x))
    fused = raw if task != "depth" else head.outputs(raw)
    want = _hf_fused(hf_out, task)
    assert want.abs().max() > 0.1 and _max_diff(fused, want) <= ATOL
    got = head.predict(model, x)
    assert got.shape == (2, 1 if task == "depth" else head.cfg.out_channels, *SIZE)
    assert _max_diff(got, _hf_at_image_size(hf_out, task, processor)) <= ATOL


# --------------------------------------------------------------------------- transformers → tips
@pytest.mark.parametrize("task,swiglu", [("depth", False), ("normals", True), ("segmentation", False)])
def test_transformers_dpt_folder_loads_as_head_and_backbone(tmp_path, task, swiglu) -> None:
    hf = _randomise(CLASSES[task](_dpt_config(swiglu, **TASK_FIELDS[task])))
    hf.save_pretrained(tmp_path / "hf")
    head, model = tips.load_head(tmp_path / "hf"), tips.load(tmp_path / "hf")
    cfg = head.cfg
    assert (cfg.task, cfg.width, cfg.channels, cfg.fusion_width, cfg.layers) == (task, WIDTH, (8, 8, 16, 24), 16, (0, 2, 3, 4))
    if task == "depth":
        assert (cfg.out_channels, cfg.min_depth, cfg.max_depth, cfg.shift, cfg.project_relu) == (10, 0.5, 3.0, 0.5, True)
    assert cfg.out_channels == {"depth": 10, "normals": 3, "segmentation": 5}[task]
    assert model.cfg.vision.ffn == ("swiglu" if swiglu else "mlp") and model.text is None
    _assert_head_matches(head, model, hf, task, Tipsv2DptImageProcessor())  # save_pretrained writes no processor


def test_backbone_in_the_dpt_file_matches_transformers_backbone(tmp_path) -> None:
    """tips.load(folder): CLS1, CLS2 and patch tokens of each stage the head reads, and of the last block."""
    hf = _randomise(Tipsv2DptForDepthEstimation(_dpt_config(**TASK_FIELDS["depth"])))
    hf.save_pretrained(tmp_path / "hf")
    model = tips.load(tmp_path / "hf")
    x = _images(1)
    with torch.no_grad():
        out = hf.backbone(x, output_hidden_states=True)
        ours = model.vision.intermediate_layers(x, [0, 2, 3, 4], norm=True)
        final = model.encode_image(x)
        last = hf.backbone.layernorm(out.hidden_states[-1])
    for tokens, f in [*zip(out.feature_maps, ours), (last, final)]:
        assert _max_diff(tokens[:, 0], f.cls_alt) <= ATOL and _max_diff(tokens[:, 1], f.cls_syn) <= ATOL
        assert _max_diff(tokens[:, 2:], f.patch_tokens.flatten(1, 2)) <= ATOL


def test_dense_prediction_folder_gives_each_head_by_task(tmp_path) -> None:
    hf = _randomise(Tipsv2DptForDensePrediction(_dpt_config(num_depth_bins=6, num_labels=4)))
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match=r"holds \['depth', 'normals', 'segmentation'\] heads.*pass task="):
        tips.load_head(tmp_path / "hf")
    model = tips.load(tmp_path / "hf")
    x = _images(2, batch=1)
    with torch.no_grad():
        out = hf(pixel_values=x)
        for task, want in [("depth", out.predicted_depth[:, None]), ("normals", out.normals),
                           ("segmentation", out.segmentation_logits)]:  # fmt: skip
            head = tips.load_head(tmp_path / "hf" / "model.safetensors", task=task)
            raw = head.decode(head.features(model, x))
            assert _max_diff(head.outputs(raw) if task == "depth" else raw, want) <= ATOL


@pytest.mark.parametrize("swiglu", [False, True])
def test_folder_saved_with_transformers_module_names_loads_the_same(tmp_path, swiglu) -> None:
    """``save_pretrained(save_original_format=False)`` writes transformers' module names (q/k/v split, neck.*)."""
    hf = _randomise(Tipsv2DptForSemanticSegmentation(_dpt_config(swiglu, **TASK_FIELDS["segmentation"])))
    hf.save_pretrained(tmp_path / "hf", save_original_format=False)
    assert "neck.fusion_stage.layers.0.projection.weight" in load_file(str(tmp_path / "hf" / "model.safetensors"))
    head, model = tips.load_head(tmp_path / "hf"), tips.load(tmp_path / "hf")
    assert model.cfg.vision.ffn == ("swiglu" if swiglu else "mlp")
    _assert_head_matches(head, model, hf, "segmentation", Tipsv2DptImageProcessor())


def test_config_that_disagrees_with_the_weights_names_field_key_shapes_and_file(tmp_path) -> None:
    Tipsv2DptForDepthEstimation(_dpt_config(**TASK_FIELDS["depth"])).save_pretrained(tmp_path / "hf")
    cfg_file = tmp_path / "hf" / "config.json"
    good = json.loads(cfg_file.read_text())
    for field, value, needles in [
        ("neck_hidden_sizes", [8, 12, 16, 24], ["neck_hidden_sizes", "depth_head.reassemble.out_projections.1.weight", "(8, 32, 1, 1)"]),
        ("num_depth_bins", 11, ["num_depth_bins", "depth_head.depth_head.weight", "(10, 16)"]),
        ("fusion_hidden_size", 32, ["fusion_hidden_size", "depth_head.convs.0.weight", "(16, 8, 3, 3)"]),
        ("readout_activation", "gelu", ["readout_activation='gelu'", "tanh GELU"]),
        ("depth_decoder_activation", "sigmoid", ["depth_decoder_activation='sigmoid'"]),
    ]:  # fmt: skip
        cfg_file.write_text(json.dumps({**good, field: value}))
        with pytest.raises(ValueError) as e:
            tips.load_head(tmp_path / "hf")
        for needle in [*needles, "model.safetensors"]:
            assert needle in str(e.value), (field, str(e.value))
    cfg_file.write_text(json.dumps({**good, "backbone_config": {**good["backbone_config"], "out_indices": [0, 1, 2, 3]}}))
    with pytest.raises(ValueError, match="out_indices.*stage 0 is the embeddings"):
        tips.load_head(tmp_path / "hf")
    cfg_file.write_text(json.dumps(good))
    with pytest.raises(ValueError, match="task='normals' was asked for, but the file holds \\['depth'\\]"):
        tips.load_head(tmp_path / "hf", task="normals")


# --------------------------------------------------------------------------- tips → transformers
def _our_model(swiglu: bool = False) -> tips.TIPS:
    torch.manual_seed(0)
    model = tips.create_model("tiny", **{"vision.width": WIDTH, "vision.heads": 2, "vision.depth": DEPTH,
                                         "vision.mlp_hidden": 64 if not swiglu else 48, "vision.pos_grid": 4,
                                         "vision.ffn": "swiglu" if swiglu else "mlp"}).eval()  # fmt: skip
    with torch.no_grad():
        for name, p in model.vision.named_parameters():
            if name.endswith(".gamma") or name in ("pos_embed", "mask_token", "reg_token"):
                p.normal_(0.5 if name.endswith(".gamma") else 0.0, 0.3)
    return model


def _our_head(task: str, seed: int = 3, **kw):
    torch.manual_seed(seed)
    head = build_head(task, WIDTH, {"depth": 12, "normals": 3, "segmentation": 7}[task], fusion=16,
                      reassemble=(8, 8, 16, 24), layers=(1, 2, 3, 4), **kw)  # fmt: skip
    return head.eval()


@pytest.mark.parametrize("task,swiglu", [("depth", False), ("normals", False), ("segmentation", True)])
def test_exported_folder_loads_in_transformers_and_matches_predict(tmp_path, task, swiglu) -> None:
    model, head = _our_model(swiglu), _our_head(task, min_depth=0.2, max_depth=5.0, depth_shift=0.2)
    tips.save(model, tmp_path / "model")
    save_pretrained_head(head, tmp_path / "head")
    assert tips_export(["--model", str(tmp_path / "model"), "--head", str(tmp_path / "head"),
                             "--format", "transformers", "--out", str(tmp_path / "hf")]) == 0  # fmt: skip
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert names == {"config.json", "model.safetensors", "preprocessor_config.json"}
    hf, info = CLASSES[task].from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mis-shaped key
    processor = AutoImageProcessor.from_pretrained(tmp_path / "hf")
    assert type(processor).__name__ == "Tipsv2DptImageProcessor"
    _assert_head_matches(head, model, hf.eval(), task, processor)
    back = tips.load_head(tmp_path / "hf")
    x = _images(3, batch=1)
    assert _max_diff(back.predict(model, x), head.predict(model, x)) <= 1e-6


def test_export_of_an_official_depth_head_writes_no_depth_relu_and_the_native_preprocessing(tmp_path) -> None:
    """An official head has no ReLU after 'project': the export says ``depth_decoder_activation: linear``."""
    from PIL import Image

    model, head = _our_model(), _our_head("depth")
    assert head.cfg.project_relu is False
    paths = registry.get_writer("transformers", "head")(head, tmp_path / "hf", model=model)
    config = json.loads(paths["config"].read_text())
    assert config["depth_decoder_activation"] == "linear" and config["num_depth_bins"] == 12
    assert config["backbone_config"]["out_indices"] == [2, 3, 4, 5] and config["tips"]["dpt"]["task"] == "depth"
    hf = transformers.AutoModelForDepthEstimation.from_pretrained(tmp_path / "hf").eval()
    _assert_head_matches(head, model, hf, "depth", AutoImageProcessor.from_pretrained(tmp_path / "hf"))
    image = Image.fromarray((torch.rand(30, 50, 3) * 255).byte().numpy())
    pixels = AutoImageProcessor.from_pretrained(tmp_path / "hf")(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 56, 56) and _max_diff(pixels[0], model.preprocess(image)) <= 1.5 / 255


def test_export_refuses_what_transformers_cannot_express(tmp_path) -> None:
    model = _our_model()
    cases = [
        (dict(head=_our_head("depth"), model=None), "pass the model"),
        (dict(head=build_head("normals", WIDTH, preset="probe3d", fusion=16), model=model), "only the official"),
        (dict(head=build_head("depth", WIDTH, 1, fusion=16), model=model), "1-channel regression"),
        (dict(head=_our_head("depth", depth_shift=0.1), model=model), "adds 0.1"),
        (dict(head=_our_head("segmentation", project_relu=True), model=model), "no activation after 'project'"),
        (dict(head=build_head("depth", 64, fusion=16), model=model), "width 64, the model's is 32"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            export_transformers_dpt(out=tmp_path / "hf", **kw)
    assert not (tmp_path / "hf").exists()
    assert "transformers" in registry.formats("head")
