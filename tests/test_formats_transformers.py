"""Folders written by the installed transformers' own Tipsv2* classes load with tips.load, and ours load in them."""

import json

import pytest
import torch

import tips

transformers = pytest.importorskip("transformers")
from transformers import Tipsv2Config, Tipsv2Model, Tipsv2TextConfig, Tipsv2TextModel, Tipsv2VisionConfig, Tipsv2VisionModel  # noqa: E402

WIDTH = 64


def _vision_cfg(swiglu: bool) -> dict:
    return dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4, image_size=56,
                patch_size=14, layerscale_value=0.5, use_swiglu_ffn=swiglu)  # fmt: skip


TEXT_CFG = dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=100)


def _randomise(model: torch.nn.Module) -> None:
    """transformers inits registers/mask token to zero and layer scale to a constant: make every tensor count."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "register_tokens" in name or "mask_token" in name or "lambda1" in name or "cls_token" in name:
                p.copy_(torch.randn_like(p) * 0.5 + (0.5 if "lambda1" in name else 0.0))
            elif name.endswith("temperature"):
                p.fill_(0.0123)


def _text_inputs():
    torch.manual_seed(2)
    ids = torch.randint(1, 100, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return ids * mask, mask  # padded positions hold id 0, as the tokenizer writes them


def _hf_outputs(model, x, ids, mask):
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=x, attention_mask=mask)
    tokens = out.vision_model_output.last_hidden_state
    return tokens[:, 0], tokens[:, 1], tokens[:, 2:], out.text_model_output.pooler_output


def _our_outputs(model, x, ids, mask):
    with torch.no_grad():
        f = model.encode_image(x)
        return f.cls_alt, f.cls_syn, f.patch_tokens.flatten(1, 2), model.encode_text(ids, mask == 0)


def _close(a, b, atol=1e-4):
    for name, u, v in zip(("cls1", "cls2", "patches", "text"), a, b):
        assert u.shape == v.shape, (name, u.shape, v.shape)
        assert torch.allclose(u, v, atol=atol, rtol=0), (name, float((u - v).abs().max()))


@pytest.mark.parametrize("swiglu", [False, True])
def test_tipsv2_model_folder_loads_with_tips_load(tmp_path, swiglu):
    torch.manual_seed(0)
    hf = Tipsv2Model(Tipsv2Config(vision_config=_vision_cfg(swiglu), text_config=TEXT_CFG)).eval()
    _randomise(hf)
    hf.save_pretrained(tmp_path / "hf")
    ours = tips.load(tmp_path / "hf")
    assert ours.cfg.vision.ffn == ("swiglu" if swiglu else "mlp") and ours.cfg.vision.pos_grid == 4
    x = torch.rand(2, 3, 42, 70)  # 3x5 patches: not the stored 4x4 grid, not square
    ids, mask = _text_inputs()
    _close(_hf_outputs(hf, x, ids, mask), _our_outputs(ours, x, ids, mask))
    assert ours.temperature == pytest.approx(0.0123, abs=1e-7)


@pytest.mark.parametrize("swiglu", [False, True])
def test_vision_and_text_model_folders_load_together(tmp_path, swiglu):
    torch.manual_seed(0)
    vision = Tipsv2VisionModel(Tipsv2VisionConfig(**_vision_cfg(swiglu))).eval()
    text = Tipsv2TextModel(Tipsv2TextConfig(**TEXT_CFG)).eval()
    _randomise(vision)
    vision.save_pretrained(tmp_path / "v")
    text.save_pretrained(tmp_path / "t")
    with pytest.raises(ValueError, match="only a text tower"):
        tips.load(tmp_path / "t")
    alone = tips.load(tmp_path / "v")
    assert alone.text is None and alone.cfg.vision.ffn == ("swiglu" if swiglu else "mlp")
    ours = tips.load(tmp_path / "v", text=tmp_path / "t")
    x = torch.rand(1, 3, 56, 28)
    ids, mask = _text_inputs()
    with torch.no_grad():
        tokens = vision(pixel_values=x).last_hidden_state
        pooled = text(input_ids=ids, attention_mask=mask).pooler_output
    _close((tokens[:, 0], tokens[:, 1], tokens[:, 2:], pooled), _our_outputs(ours, x, ids, mask))


def test_config_that_disagrees_with_the_weights_names_field_key_shapes_and_file(tmp_path):
    Tipsv2Model(Tipsv2Config(vision_config=_vision_cfg(False), text_config=TEXT_CFG)).save_pretrained(tmp_path / "hf")
    cfg_file = tmp_path / "hf" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["vision_config"]["mlp_ratio"] = 2
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as e:
        tips.load(tmp_path / "hf")
    msg = str(e.value)
    assert "model.safetensors" in msg and "mlp_ratio" in msg and "vision_encoder.blocks.0.mlp.fc2.weight" in msg
    assert "(64, 256)" in msg


def test_flat_config_without_sub_configs_reads_architecture_from_shapes(tmp_path):
    hf = Tipsv2Model(Tipsv2Config(vision_config=_vision_cfg(False), text_config=TEXT_CFG)).eval()
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "tipsv2", "temperature": 0.02}))
    ours = tips.load(tmp_path / "hf", heads=4)
    assert ours.cfg.vision.mlp_hidden == 256 and ours.cfg.text.mlp_hidden == 96
    x = torch.rand(1, 3, 56, 56)
    ids, mask = _text_inputs()
    _close(_hf_outputs(hf, x, ids, mask), _our_outputs(ours, x, ids, mask))


# --------------------------------------------------------------------------- our export → transformers
def _our_model(tokenizer=None, **overrides):
    torch.manual_seed(0)
    kw = {"vision.width": WIDTH, "vision.heads": 4, "vision.depth": 2, "vision.mlp_hidden": 200, "vision.pos_grid": 4,
          "text.width": WIDTH, "text.heads": 4, "text.depth": 2, "text.mlp_hidden": 96, "text.vocab_size": 80}  # fmt: skip
    kw.update(overrides)
    model = tips.create_model("tiny", tokenizer=tokenizer, **kw).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma") or name in ("vision.pos_embed", "vision.mask_token", "vision.reg_token"):
                p.normal_(1.0 if name.endswith(".gamma") else 0.0, 0.3)
    model.set_temperatures(0.011, 0.023)
    return model


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
def test_our_export_loads_in_transformers_and_back(tmp_path, ffn):
    import subprocess
    import sys

    from transformers import AutoImageProcessor, AutoModel, AutoProcessor
    from formats_spm import train_tiny_spm

    model = _our_model(tokenizer=train_tiny_spm(tmp_path), **{"vision.ffn": ffn})
    tips.save(model, tmp_path / "ours")
    cli = subprocess.run([sys.executable, "-m", "tips.cli.export", "--model", str(tmp_path / "ours"), "--format", "transformers",
                          "-o", str(tmp_path / "hf")], capture_output=True, text=True)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    hf = AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "Tipsv2Model"
    x = torch.rand(2, 3, 42, 70)
    texts = ["A photo of a CAT", "two dogs playing in the snow, at night!"]
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    enc = processor(text=texts, return_tensors="pt")
    ids, padding = model.tokenize(texts)
    assert torch.equal(enc["input_ids"], ids) and torch.equal(enc["attention_mask"] == 0, padding)
    _close(_hf_outputs(hf, x, enc["input_ids"], enc["attention_mask"]), _our_outputs(model, x, ids, (~padding).long()))
    assert float(hf.temperature.detach()) == pytest.approx(0.011)
    # the image processor: native size, bilinear, [0, 1], no mean/std, the same pixels our Preprocess gives
    from PIL import Image

    image = Image.fromarray((torch.rand(30, 50, 3) * 255).byte().numpy())
    pixels = AutoImageProcessor.from_pretrained(tmp_path / "hf")(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 56, 56)
    assert float((pixels[0] - model.preprocess(image)).abs().max()) <= 1.5 / 255  # uint8 rounding apart
    vision = Tipsv2VisionModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.allclose(vision(pixel_values=x).last_hidden_state[:, 2:], model.encode_image(x).patch_tokens.flatten(1, 2), atol=1e-4)
    back = tips.load(tmp_path / "hf")
    assert back.cfg == model.cfg and back.temperature_syn == pytest.approx(0.023)
    assert back.tokenizer is not None and back.tokenizer.kind == "sentencepiece"
    _close(_our_outputs(model, x, ids, (~padding).long()), _our_outputs(back, x, ids, (~padding).long()), atol=1e-6)


def test_export_with_our_bpe_tokenizer_warns_and_writes_no_tokenizer(tmp_path):
    model = _our_model(tokenizer="bpe", **{"text.vocab_size": 49408})
    with pytest.warns(UserWarning, match="no tokenizer files written because its tokenizer is our byte-level BPE"):
        tips.save(model, tmp_path / "hf", format="transformers")
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert names == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["tips"]["tokenizer"] == "bpe"
    hf = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.rand(1, 3, 56, 56)
    ids, padding = model.tokenize(["a photo"])
    _close(_hf_outputs(hf, x, ids, (~padding).long()), _our_outputs(model, x, ids, (~padding).long()))


def test_image_tower_alone_exports_as_a_tipsv2_vision_model(tmp_path):
    model = _our_model()
    model.text = None
    model.cfg = tips.ModelConfig(vision=model.cfg.vision, text=None)
    paths = tips.save(model, tmp_path / "hf", format="transformers")
    assert json.loads(paths["config"].read_text())["model_type"] == "tipsv2_vision_model"
    vision = Tipsv2VisionModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.rand(1, 3, 28, 56)
    with torch.no_grad():
        tokens = vision(pixel_values=x).last_hidden_state
        f = model.encode_image(x)
    assert torch.allclose(tokens[:, 0], f.cls_alt, atol=1e-4) and torch.allclose(tokens[:, 1], f.cls_syn, atol=1e-4)
    assert torch.allclose(tokens[:, 2:], f.patch_tokens.flatten(1, 2), atol=1e-4)
