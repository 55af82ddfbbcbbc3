"""Fast inference paths: int8 layers, mixed precision, tips-extract flags, ONNX graphs that match PyTorch."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch
from PIL import Image

import tips
from tips.cli.extract import main as extract_main
from tips.inference.extract import load_features
from tips.inference.quantize import Int8DynamicLinear, is_quantized, require

pytest.importorskip("onnxruntime")


def tiny(seed: int = 0, **overrides) -> tips.TIPS:
    torch.manual_seed(seed)
    overrides = {"vision.depth": 2, "text.depth": 2, "text.vocab_size": 1000, **overrides}
    return tips.TIPS(tips.get_variant("tiny", **overrides)).eval()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(0, -2), b.flatten(0, -2), dim=-1).min().item()


def test_int8_quantize_replaces_every_linear_and_stays_close_to_fp32():
    model = tiny()
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    ids, padding = torch.randint(0, 1000, (2, 5)), torch.zeros(2, 5, dtype=torch.bool)
    with torch.inference_mode():
        ref, ref_text = model.encode_image(x), model.encode_text(ids, padding)
        tips.quantize(model, "int8")
        got, got_text = model.encode_image(x), model.encode_text(ids, padding)
    assert is_quantized(model)
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    assert isinstance(model.vision.blocks[0].attn.qkv, Int8DynamicLinear)
    for key in ("cls_alt", "cls_syn", "patch_tokens"):
        assert cosine(getattr(got, key), getattr(ref, key)) > 0.99
        assert not torch.equal(getattr(got, key), getattr(ref, key))  # it really is another computation
    assert cosine(got_text, ref_text) > 0.99


def test_int8_engine_follows_the_cpu_flags_and_onednn_keeps_full_8_bit_activations(tmp_path, monkeypatch):
    from tips.inference import slow_paths
    from tips.inference.quantize import CPU_ENGINES, default_cpu_engine

    vnni, avx2 = tmp_path / "vnni", tmp_path / "avx2"
    vnni.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    avx2.write_text("flags\t\t: fpu sse2 avx2 fma\n")
    assert default_cpu_engine(vnni) == "onednn" and default_cpu_engine(avx2) == "fbgemm"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # oneDNN capped below its VNNI kernels
    assert default_cpu_engine(vnni) == "fbgemm"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert default_cpu_engine(avx2, engines=["qnnpack", "onednn"]) == "onednn"  # a build without fbgemm (ARM)
    assert default_cpu_engine(vnni, engines=["qnnpack", "fbgemm"]) == "fbgemm"

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(256, 64)
    x[:, 3] *= 20  # an outlier channel, as trained ViTs have: the activation range is what the bits must cover
    before = torch.backends.quantized.engine
    layers = {engine: Int8DynamicLinear(linear, engine) for engine in CPU_ENGINES}
    assert torch.backends.quantized.engine == before  # the prepack's engine is not left behind
    with torch.inference_mode():
        ref = linear(x)
        out = {e: layer(x) for e, layer in layers.items()}
        err = {e: ((y - ref).norm() / ref.norm()).item() for e, y in out.items()}
        for engine in CPU_ENGINES:  # a packed layer keeps its engine, whatever the global one says
            torch.backends.quantized.engine = engine
            try:
                assert all(torch.equal(layer(x), out[e]) for e, layer in layers.items())
            finally:
                torch.backends.quantized.engine = before
    assert err["onednn"] < 0.7 * err["fbgemm"]  # 8-bit activations: about half fbgemm's 7-bit error

    read_flags = slow_paths.cpu_flags
    for cpuinfo, engine in ((vnni, "onednn"), (avx2, "fbgemm")):  # backend="auto" on a fake CPU
        monkeypatch.setattr(slow_paths, "cpu_flags", lambda c="/proc/cpuinfo", f=cpuinfo: read_flags(f))
        assert tips.quantize(tiny(), "int8").vision.blocks[0].mlp.fc1.engine == engine


def test_an_int8_model_refuses_to_be_saved(tmp_path):
    with pytest.raises(RuntimeError, match="cannot be saved"):
        tips.save(tips.quantize(tiny(), "int8"), tmp_path / "q")


def test_quantize_and_autocast_refuse_unknown_modes():
    with pytest.raises(ValueError, match="quantize mode must be one of"):
        tips.quantize(tiny(), "int4")
    with pytest.raises(ValueError, match="dtype must be one of"):
        tips.autocast("cpu", "bf16")


def test_autocast_context_runs_matmuls_in_bfloat16_and_load_casts_weights(tmp_path):
    model = tiny()
    x = torch.rand(1, 3, 56, 56)
    with torch.inference_mode():
        ref = model.encode_image(x)
        with tips.autocast(model, "bfloat16"):
            mixed = model.encode_image(x)
    assert model.vision.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert cosine(mixed.cls_alt, ref.cls_alt) > 0.99 and not torch.equal(mixed.cls_alt, ref.cls_alt)
    tips.save(model, tmp_path / "m")
    cast = tips.load(tmp_path / "m", dtype="bfloat16")
    assert cast.vision.blocks[0].attn.qkv.weight.dtype == torch.bfloat16


def test_tips_extract_dtype_and_quantize_flags_write_features_close_to_fp32(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (60, 70, 3), dtype=np.uint8)).save(images / f"{i}.png")
    tips.save(tiny(), tmp_path / "model")
    common = [str(images), "--model", str(tmp_path / "model"), "--resolution", "56", "--patch-tokens",
              "--num-workers", "0", "--no-progress", "--device", "cpu"]
    outs = {}
    for name, flags in {"fp32": [], "bf16": ["--dtype", "bfloat16"], "int8": ["--quantize", "int8"]}.items():
        assert extract_main([*common, "-o", str(tmp_path / name), *flags]) == 0
        outs[name] = load_features(tmp_path / name)
    for name in ("bf16", "int8"):
        for key in ("cls_alt", "cls_syn", "patch_tokens"):
            assert cosine(getattr(outs[name], key), getattr(outs["fp32"], key)) > 0.99, (name, key)


def test_native_bf16_and_vnni_are_read_from_the_cpu_flags_and_hinted_only_for_fp32_cpu_runs(tmp_path, monkeypatch):
    from tips.inference import precision

    amx, avx2 = tmp_path / "amx", tmp_path / "avx2"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile\n\n"
                   "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile\n")
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: avx512_bf16_fake\n")
    assert precision.cpu_has_native_bf16(amx) and not precision.cpu_has_native_bf16(avx2)
    assert not precision.cpu_has_native_bf16(tmp_path / "missing")

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "cpu_has_vnni", lambda: False)
    hint = precision.fast_path_hint(cpu, "float32", None)
    assert "--dtype bfloat16" in hint and "--quantize int8" not in hint
    assert precision.fast_path_hint(cpu, "bfloat16", None) is None
    assert precision.fast_path_hint(cpu, "float32", "int8") is None
    assert precision.fast_path_hint(torch.device("meta"), "float32", None) is None
    monkeypatch.setattr(precision, "cpu_has_vnni", lambda: True)  # int8 named first: the faster of the two
    both = precision.fast_path_hint(cpu, "float32", None)
    assert both.index("--quantize int8") < both.index("--dtype bfloat16")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert "--dtype" not in precision.fast_path_hint(cpu, None, None)
    monkeypatch.setattr(precision, "cpu_has_vnni", lambda: False)
    assert precision.fast_path_hint(cpu, "float32", None) is None


def test_onnx_export_of_a_tiny_model_matches_pytorch_within_1e_4(tmp_path, capfd):
    from tips.cli.export import main as export_main
    from tips.formats.onnx import example_text, session

    model = tiny(**{"vision.depth": 1, "text.depth": 1})  # the exporter's cost grows with depth
    tips.save(model, tmp_path / "model")
    capfd.readouterr()
    assert export_main(["--model", str(tmp_path / "model"), "--format", "onnx", "--resolution", "56", "--int8",
                        "--out", str(tmp_path)]) == 0
    err = capfd.readouterr().err  # neither onnxruntime's pre-processing hint nor torchao's pytree notices
    assert "pre-processing before quantization" not in err and "_pytree" not in err, err
    assert (tmp_path / "tips_vision.int8.onnx").is_file()
    paths = {"vision": tmp_path / "tips_vision.onnx", "text": tmp_path / "tips_text.onnx"}
    x = torch.rand(5, 3, 56, 56, generator=torch.Generator().manual_seed(3))  # another batch size
    cls_alt, cls_syn, patches = session(paths["vision"]).run(None, {"images": x.numpy()})
    with torch.inference_mode():
        want = model.encode_image(x)
        ids, padding = example_text(model, 4, 9, seed=5)
        want_text = model.encode_text(ids, padding)
    assert patches.shape == (5, 4, 4, 192)
    np.testing.assert_allclose(cls_alt, want.cls_alt.numpy(), atol=1e-4)
    np.testing.assert_allclose(cls_syn, want.cls_syn.numpy(), atol=1e-4)
    np.testing.assert_allclose(patches, want.patch_tokens.numpy(), atol=1e-4)
    (text,) = session(paths["text"]).run(None, {"ids": ids.numpy(), "padding": padding.numpy()})
    np.testing.assert_allclose(text, want_text.numpy(), atol=1e-4)


@pytest.mark.slow
def test_onnx_export_of_an_s14_tower_matches_pytorch_within_1e_4(tmp_path):
    from tips.formats.onnx import check_onnx, write_onnx

    torch.manual_seed(0)
    model = tips.TIPS(tips.get_variant("s14")).eval()
    paths = write_onnx(model, tmp_path, image_size=224, check=False)
    errors = check_onnx(model, paths, 224, batch=2)
    assert errors["vision"] < 1e-4 and errors["text"] < 1e-4, errors


def test_a_missing_deploy_extra_names_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(__import__("sys").modules, "onnxruntime", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'tips\[deploy\]'"):
        require("onnxruntime", "running ONNX graphs")


def test_a_slow_path_is_named_from_the_cpu_flags_and_warned_once_by_autocast_and_quantize(tmp_path, monkeypatch):
    import warnings

    from tips.inference import slow_paths as precision

    amx, avx2, sse = tmp_path / "amx", tmp_path / "avx2", tmp_path / "sse"
    amx.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16\n")
    avx2.write_text("flags\t\t: fpu sse2 avx2 fma\n")
    sse.write_text("flags\t\t: fpu sse2 sse4_2\n")
    arm = tmp_path / "arm"
    arm.write_text("Features\t: fp asimd\n")
    warn = precision.slow_path_warning
    assert "4-9x slower" in warn("cpu", "bfloat16", None, avx2) and "float32" in warn("cpu", "bfloat16", None, avx2)
    assert warn("cpu", "bfloat16", None, amx) is None  # native bf16: the fast path
    assert warn("cuda", "bfloat16", None, avx2) is None
    assert warn("cpu", "float32", None, avx2) is None and warn("cpu", None, "int8", avx2) is None
    assert "no AVX2" in warn("cpu", None, "int8", sse)
    spr = tmp_path / "spr"
    spr.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_fp16\n")
    assert "about 4x slower" in warn("cpu", "float16", None, amx) and "--dtype bfloat16" in warn("cpu", "float16",
                                                                                                 None, amx)
    assert "the default float32" in warn("cpu", "float16", None, avx2)
    assert warn("cpu", "float16", None, spr) is None and warn("cuda", "float16", None, avx2) is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # the user capped oneDNN below its bf16 kernels
    assert "ONEDNN_MAX_CPU_ISA=AVX2 hides" in warn("cpu", "bfloat16", None, amx)
    assert not precision.cpu_has_native_bf16(amx)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_bf16")
    assert warn("cpu", "bfloat16", None, amx) is None
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert warn("cpu", "bfloat16", None, arm) is None and warn("cpu", "bfloat16", None, tmp_path / "missing") is None

    read_flags = precision.cpu_flags
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": read_flags(sse))  # a fake CPU
    precision._warn_once.cache_clear()
    model = tips.create_model("tiny")
    with pytest.warns(precision.SlowPathWarning, match="4-9x slower") as seen:
        for _ in range(3):  # one warning for a whole run of batches
            with tips.autocast(model, "bfloat16"):
                pass
    assert len(seen) == 1
    with pytest.warns(precision.SlowPathWarning, match="no AVX2"):
        tips.quantize(model, "int8")
    precision._warn_once.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tips.autocast(model, "float32"):  # the default never warns
            pass
