"""timm both ways: our export loads through timm's own pretrained path; timm's state dicts load with tips.load."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import tips

timm = pytest.importorskip("timm")


def _model(ffn="mlp"):
    torch.manual_seed(0)
    kw = {"vision.width": 64, "vision.heads": 4, "vision.depth": 2, "vision.pos_grid": 4, "vision.ffn": ffn,
          "vision.mlp_hidden": 200 if ffn == "swiglu" else 160, "text.depth": 1}  # fmt: skip
    model = tips.create_model("tiny", **kw).eval()
    with torch.no_grad():
        for name, p in model.vision.named_parameters():
            if name.endswith(".gamma") or name in ("pos_embed", "mask_token", "reg_token"):
                p.normal_(1.0 if name.endswith(".gamma") else 0.0, 0.3)
    return model


def _tokens(model, x):
    with torch.no_grad():
        return model.vision.forward_features(x)


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
def test_our_timm_export_loads_through_timm_pretrained_cfg_overlay(tmp_path, ffn):
    model = _model(ffn)
    tips.save(model, tmp_path / "ours")
    cli = subprocess.run([sys.executable, "-m", "tips.cli.export", "--model", str(tmp_path / "ours"), "--format", "timm", "-o",
                          str(tmp_path / "timm"), "--name", "tiny"], capture_output=True, text=True)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    weights = tmp_path / "timm" / "tiny_timm.safetensors"
    note = json.loads(weights.with_suffix(".tips.json").read_text())
    assert note["timm_model"] == ("vit_giant_patch14_reg1_tipsv2" if ffn == "swiglu" else "vit_base_patch14_reg1_tipsv2")
    net = timm.create_model(note["timm_model"], pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)),
                            **note["create_model_kwargs"]).eval()  # fmt: skip
    x = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        theirs = net.forward_features(x)
    ours = model.encode_image(x)
    assert theirs.shape == (2, 2 + 16, 64)
    assert torch.allclose(theirs[:, 2:].reshape(2, 4, 4, 64), ours.patch_tokens, atol=1e-5)
    assert torch.allclose(theirs[:, 0], ours.cls_alt, atol=1e-5) and torch.allclose(theirs[:, 1], ours.cls_syn, atol=1e-5)
    back = tips.load(weights)  # the mask token and head count come back too
    assert torch.equal(back.vision.mask_token, model.vision.mask_token) and back.cfg.vision == model.cfg.vision
    assert torch.allclose(_tokens(back, x), _tokens(model, x), atol=1e-6)


def test_timm_state_dict_of_a_registered_architecture_loads_with_tips_load(tmp_path):
    torch.manual_seed(0)
    net = timm.create_model("vit_base_patch14_reg1_tipsv2", pretrained=False, img_size=56).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".gamma") or name in ("reg_token", "cls_token"):
                p.normal_(1.0 if name.endswith(".gamma") else 0.0, 0.3)
    assert "mask_token" not in net.state_dict() and net.pos_embed.shape == (1, 16, 768)
    torch.save(net.state_dict(), tmp_path / "base.pth")
    ours = tips.load(tmp_path / "base.pth")
    assert (ours.cfg.vision.width, ours.cfg.vision.depth, ours.cfg.vision.heads, ours.cfg.vision.pos_grid) == (768, 12, 12, 4)
    assert torch.all(ours.vision.mask_token == 0)
    x = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(net.forward_features(x), _tokens(ours, x), atol=1e-4)


def test_timm_swiglu_state_dict_loads_with_tips_load(tmp_path):
    """timm's giant architecture (SwiGLU packed in fc1), shrunk; layer scale and both prefix tokens random."""
    torch.manual_seed(0)
    net = timm.create_model("vit_giant_patch14_reg1_tipsv2", pretrained=False, img_size=56, embed_dim=64, depth=2,
                            num_heads=2, mlp_ratio=2.0).eval()  # fmt: skip
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".gamma") or name in ("reg_token", "cls_token", "pos_embed"):
                p.normal_(1.0 if name.endswith(".gamma") else 0.0, 0.3)
    save_file(net.state_dict(), str(tmp_path / "giant.safetensors"))
    ours = tips.load(tmp_path / "giant.safetensors", heads=2)
    assert (ours.cfg.vision.ffn, ours.cfg.vision.mlp_hidden) == ("swiglu", 64)
    x = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        tokens, f = net.forward_features(x), ours.encode_image(x)
    assert torch.allclose(tokens[:, 0], f.cls_alt, atol=1e-5) and torch.allclose(tokens[:, 1], f.cls_syn, atol=1e-5)
    assert torch.allclose(tokens[:, 2:], f.patch_tokens.flatten(1, 2), atol=1e-5)


def test_tiny_timm_state_dict_needs_its_head_count(tmp_path):
    torch.manual_seed(0)
    net = timm.create_model("vit_base_patch14_reg1_tipsv2", pretrained=False, img_size=42, embed_dim=64, depth=2,
                            num_heads=2).eval()  # fmt: skip
    save_file(net.state_dict(), str(tmp_path / "tiny.safetensors"))
    ours = tips.load(tmp_path / "tiny.safetensors", heads=2)
    x = torch.rand(1, 3, 42, 42)
    with torch.no_grad():
        assert torch.allclose(net.forward_features(x), _tokens(ours, x), atol=1e-5)
    net.reset_classifier(10)
    save_file(net.state_dict(), str(tmp_path / "head.safetensors"))
    with pytest.raises(KeyError, match="classifier keys"):
        tips.load(tmp_path / "head.safetensors", heads=2)
