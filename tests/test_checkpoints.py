"""Checkpoint round trips, strict loading errors, safe reading, and official names offline."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import tips
from tips.formats.detect import detect_format


def _model(**overrides):
    torch.manual_seed(0)
    kw = {"vision.depth": 2, "text.depth": 2}
    kw.update(overrides)
    model = tips.create_model("tiny", **kw).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma") or name in ("vision.pos_embed", "vision.mask_token"):
                p.normal_(1.0 if name.endswith(".gamma") else 0.0, 0.3)
    model.set_temperatures(0.011, 0.023)
    return model


def _outputs(model, x, texts=("a red sphere", "two blue cubes on the floor")):
    with torch.no_grad():
        out = model.encode_image(x)
        return out.cls_alt, out.cls_syn, out.patch_tokens, model.encode_text(list(texts))


def _assert_same(a, b, atol=0.0):
    for u, v in zip(a, b):
        assert torch.allclose(u, v, atol=atol, rtol=0), (u - v).abs().max()


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
def test_save_pretrained_round_trip_is_exact(tmp_path, ffn):
    model = _model(**{"vision.ffn": ffn, "vision.mlp_hidden": 200})
    tips.save(model, tmp_path / "ckpt")
    loaded = tips.load(tmp_path / "ckpt")
    x = torch.rand(2, 3, 224, 196)
    _assert_same(_outputs(model, x), _outputs(loaded, x))
    assert loaded.temperature == pytest.approx(0.011) and loaded.temperature_syn == pytest.approx(0.023)
    assert loaded.cfg == model.cfg and not loaded.training
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["tokenizer"] == "bpe"


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
def test_export_to_official_layout_round_trip(tmp_path, ffn):
    model = _model(**{"vision.ffn": ffn, "vision.mlp_hidden": 200})
    subdir = tmp_path / "src"
    tips.save(model, subdir)
    cli = subprocess.run([sys.executable, "-m", "tips.cli.export", "--model", str(subdir), "--format", "official", "--out", str(tmp_path / "off"),
                          "--name", "m"], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    vision = np.load(tmp_path / "off" / "m_vision.npz", allow_pickle=False)
    assert "register_tokens" in vision.files and "reg_token" not in vision.files
    assert vision["pos_embed"].shape == (1, 1 + 16 * 16, 192) and np.all(vision["pos_embed"][0, 0] == 0)
    assert ("blocks.0.mlp.w12.weight" in vision.files) == (ffn == "swiglu")
    text = np.load(tmp_path / "off" / "m_text.npz", allow_pickle=False)
    assert float(text["temperature"]) == pytest.approx(0.011)
    loaded = tips.load(tmp_path / "off" / "m_vision.npz", text=tmp_path / "off" / "m_text.npz", tokenizer="bpe")
    x = torch.rand(1, 3, 168, 252)
    _assert_same(_outputs(model, x), _outputs(loaded, x), atol=1e-6)
    assert loaded.temperature_syn == pytest.approx(0.023)  # from the sidecar


def test_heads_are_inferred_from_width_and_overridable(tmp_path):
    model = tips.create_model("tiny", **{"vision.width": 128, "vision.heads": 2, "vision.mlp_hidden": 256,
                                        "vision.depth": 1}).eval()
    paths = tips.save(model, tmp_path, format="official", name="w")
    paths["sidecar"].unlink()  # no sidecar: heads come from the width
    assert tips.load(paths["vision"]).cfg.vision.heads == 2  # 128 // 64
    assert tips.load(paths["vision"], heads=4).cfg.vision.heads == 4


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    model = _model()
    paths = tips.save(model, tmp_path, format="official", name="bad")
    sd = dict(np.load(paths["text"], allow_pickle=False))
    sd["transformer.resblocks.1.ln_2.weight"] = np.ones(7, np.float32)
    np.savez(paths["text"], **sd)
    with pytest.raises(ValueError, match=r"transformer\.resblocks\.1\.ln_2\.weight.*\(7,\).*\(192,\)"):
        tips.load(paths["vision"], text=paths["text"])


def test_missing_and_unknown_keys_are_named(tmp_path):
    paths = tips.save(_model(), tmp_path, format="official", name="bad")
    sd = dict(np.load(paths["vision"], allow_pickle=False))
    del sd["norm.bias"]
    sd["blocks.0.surprise"] = np.zeros(3, np.float32)
    np.savez(paths["vision"], **sd)
    with pytest.raises(KeyError, match=r"norm\.bias.*blocks\.0\.surprise"):
        tips.load(paths["vision"])


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "evil_vision.npz"
    np.savez(path, register_tokens=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="unpickling"):
        tips.load(path)


def test_hugging_face_single_file_layout(tmp_path):
    from safetensors.torch import save_file

    model = _model()
    paths = tips.save(model, tmp_path / "off", format="official", name="x")
    v = {f"vision_encoder.{k}": torch.from_numpy(a) for k, a in np.load(paths["vision"]).items()}
    t = {f"text_encoder.{k}": torch.from_numpy(a) for k, a in np.load(paths["text"]).items() if k != "temperature"}
    (tmp_path / "hf").mkdir()
    save_file({**v, **t}, str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "tips", "temperature": 0.011}))
    loaded = tips.load(tmp_path / "hf", tokenizer="bpe")
    x = torch.rand(1, 3, 224, 224)
    _assert_same(_outputs(model, x), _outputs(loaded, x), atol=1e-6)
    assert loaded.temperature == pytest.approx(0.011)


def test_official_name_offline_says_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TIPS_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        tips.load("tips-v2-b14")
    msg = str(e.value)
    assert "tips_v2_oss_b14_vision.npz" in msg and str(tmp_path) in msg and "https://" in msg


def test_unknown_source_lists_official_names():
    with pytest.raises(FileNotFoundError, match="tips-v2-l14"):
        tips.load("no-such-model")


def test_detect_format_by_keys():
    assert detect_format({"vision_encoder.cls_token"}) == "hf"
    assert detect_format({"encoder/encoder_norm/scale"}) == "scenic_vision"
    assert detect_format({"token_emb/emb_var"}) == "scenic_text"
    assert detect_format({"register_tokens", "cls_token"}) == "official_vision"
    assert detect_format({"token_embedding.weight"}) == "official_text"
    with pytest.raises(ValueError, match="unrecognised"):
        detect_format({"foo"})


def test_save_pretrained_replaces_an_existing_folder_atomically(tmp_path):
    a, b = _model(), tips.create_model("tiny", **{"vision.depth": 2, "text.depth": 2})
    tips.save(a, tmp_path / "ck")
    tips.save(b, tmp_path / "ck")
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    loaded = tips.load(tmp_path / "ck")
    assert torch.equal(loaded.vision.pos_embed, b.vision.pos_embed)
