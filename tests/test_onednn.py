"""fp32 CPU inference on oneDNN-packed weights: equal to the eager model, what the tools run, and the plain model
wherever the packed kernel does not apply (saving, autocast, gradients, other dtypes, int8)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tips
from tips.inference import onednn
from tips.inference.onednn import PackedLinear, is_packed, pack_linears
from tips.inference.quantize import is_quantized

pytestmark = pytest.mark.skipif(not onednn.onednn_available(), reason="this PyTorch build has no oneDNN")


def tiny(gelu: str = "erf") -> tips.TIPS:
    torch.manual_seed(0)
    model = tips.TIPS(tips.get_variant("tiny", **{"vision.depth": 2, "text.depth": 2, "text.vocab_size": 1000,
                                                 "vision.gelu": gelu})).eval()
    with torch.no_grad():  # LayerScale away from its init so that folding it is visible
        for block in model.vision.blocks:
            block.ls1.gamma.uniform_(0.2, 2.0)
            block.ls2.gamma.uniform_(0.2, 2.0)
    return model


@pytest.mark.parametrize("gelu", ["erf", "tanh"])
def test_packed_tower_equals_the_eager_tower_with_gelu_and_layerscale_fused(gelu):
    eager = tiny(gelu)
    packed = copy.deepcopy(eager)
    assert pack_linears(packed) == 4 * len(eager.vision.blocks)
    block = packed.vision.blocks[0]
    assert isinstance(block.attn.qkv, PackedLinear) and block.mlp.fc1.act is not None
    assert block.attn.proj.scale is block.ls1.gamma and block.mlp.fc2.scale is block.ls2.gamma
    assert isinstance(block.mlp.act, nn.Identity) and block.ls1(torch.ones(3)).eq(1).all()
    x = torch.rand(3, 3, 112, 84, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want, got = eager.encode_image(x), packed.encode_image(x)
        layers_want = eager.vision.intermediate_layers(x, [0, 1])
        layers_got = packed.vision.intermediate_layers(x, [0, 1])
    for key in ("cls_alt", "cls_syn", "patch_tokens"):
        torch.testing.assert_close(getattr(got, key), getattr(want, key), atol=2e-5, rtol=1e-4)
    for a, b in zip(layers_got, layers_want):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    # the text tower keeps its layers (nn.MultiheadAttention reads its weights directly)
    assert not any(isinstance(m, PackedLinear) for m in packed.text.modules())


def test_prepare_for_inference_packs_fp32_cpu_jobs_only(monkeypatch):
    assert is_packed(tips.prepare_for_inference(tiny(), "cpu"))
    assert is_packed(tips.prepare_for_inference(tiny(), "cpu", dtype="float32"))
    assert not is_packed(tips.prepare_for_inference(tiny(), "cpu", dtype="bfloat16"))
    assert not is_packed(tips.prepare_for_inference(tiny(), "cpu", quantize="int8"))
    assert not is_packed(tips.prepare_for_inference(tiny().to(torch.bfloat16), "cpu"))
    monkeypatch.setattr(onednn, "onednn_available", lambda: False)
    model = tips.prepare_for_inference(tiny(), "cpu")
    assert not is_packed(model) and type(model.vision.blocks[0].attn.qkv) is nn.Linear


def test_a_packed_model_behaves_as_the_unpacked_one_wherever_the_kernel_does_not_apply(tmp_path):
    eager = tiny()
    packed = tips.prepare_for_inference(copy.deepcopy(eager), "cpu")
    # same parameters under the same names: fingerprints, saving and loading see the model as it was
    assert list(packed.state_dict()) == list(eager.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(packed.state_dict().values(), eager.state_dict().values()))
    tips.save(packed, tmp_path / "saved")
    x = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want = eager.encode_image(x).cls_alt
        torch.testing.assert_close(tips.load(tmp_path / "saved").encode_image(x).cls_alt, want)
        torch.testing.assert_close(copy.deepcopy(packed).encode_image(x).cls_alt, want, atol=2e-5, rtol=1e-4)
        with tips.autocast(packed, "bfloat16"):  # the eager bf16 computation, not fp32 behind the user's back
            got_bf16 = packed.encode_image(x).cls_alt
        with tips.autocast(eager, "bfloat16"):
            assert torch.equal(got_bf16, eager.encode_image(x).cls_alt)
    # gradients flow through the plain computation
    packed.encode_image(x, grad=True).cls_alt.sum().backward()
    eager.encode_image(x, grad=True).cls_alt.sum().backward()
    torch.testing.assert_close(packed.vision.blocks[0].attn.qkv.weight.grad,
                               eager.vision.blocks[0].attn.qkv.weight.grad)
    # a weight changed in place after packing is seen (the packed copy is made again)
    with torch.no_grad():
        for model in (packed, eager):
            model.vision.blocks[1].ls2.gamma.mul_(3)
            model.vision.blocks[1].mlp.fc1.weight.add_(0.01)
    with torch.inference_mode():
        torch.testing.assert_close(packed.encode_image(x).cls_alt, eager.encode_image(x).cls_alt, atol=2e-5,
                                   rtol=1e-4)
    # another dtype drops the packed copy; int8 quantises the plain layers
    packed.to(torch.bfloat16)
    assert packed.vision.blocks[0].attn.qkv._packed is None
    quantized = tips.quantize(tips.prepare_for_inference(tiny(), "cpu"), "int8")
    assert not is_packed(quantized) and is_quantized(quantized)
    with torch.inference_mode():  # LayerScale folded into the int8 layers, the result still that of the model
        got, want = quantized.encode_image(x).patch_tokens, tiny().encode_image(x).patch_tokens
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() > 0.99
