"""Every reader checks a config or sidecar against the weights' own headers before it builds anything.

Tampered copies of a tiny model (a config claiming a 16384-wide, 64-deep tower, a 10⁹-long text table, a 65536-wide
DPT head, a zip bomb, an .npy header claiming 10¹² elements, heads: 0, a missing "model", non-JSON, a duplicate zip
member, a tokenizer outside the folder) are read in one child process: each must be refused with a message naming
the json or the member, and the child's peak RSS must stay far below what building any claimed model would take.
Also: ``tips.save`` writes every format for models and heads, and ``tips.load`` / ``tips.load_head`` read each back
exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import tips
from tips.models.dpt import DenseHead, make_config

PEAK_RSS_LIMIT = 2 << 30  # bytes
SMALL = {"text.vocab_size": 512}


def _model() -> tips.TIPS:
    return tips.create_model("tiny", **SMALL).eval()


def _edit_json(path: Path, edit) -> None:
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


def _replace_member(src: Path, dst: Path, name: str, write) -> None:
    """Copy a zip, replacing member ``name`` by what ``write(zipfile, name)`` writes (None: keep and duplicate)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename != name:
                zout.writestr(info.filename, zin.read(info))
        write(zout, name, zin.read(name))


def _npy_header(shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _bomb(zout: zipfile.ZipFile, name: str, _: bytes) -> None:
    """A member whose header claims one float and which inflates to 256 MiB of zeros (≈ 250 KiB compressed)."""
    with zout.open(name, "w", force_zip64=True) as f:
        f.write(_npy_header((1,)))
        chunk = bytes(1 << 20)
        for _ in range(256):
            f.write(chunk)


def _huge_header(zout: zipfile.ZipFile, name: str, _: bytes) -> None:
    zout.writestr(name, _npy_header((10**12,)) + bytes(16))


def _duplicate(zout: zipfile.ZipFile, name: str, data: bytes) -> None:
    import warnings

    zout.writestr(name, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the point
        zout.writestr(name, data)


@pytest.fixture(scope="module")
def tampered(tmp_path_factory) -> dict[str, tuple[str, str, str]]:
    """{case: (reader, path, what the refusal must name)} for tampered copies of a tiny model and head."""
    root = tmp_path_factory.mktemp("tampered")
    model = _model()
    head = DenseHead(make_config("depth", 192)).eval()
    tips.save(model, root / "ours")
    official = tips.save(model, root / "official", format="official", name="m")
    timm_files = tips.save(model, root / "timm", format="timm", name="m")
    with pytest.warns(UserWarning):
        tips.save(model, root / "hf", format="transformers")
    tips.save(head, root / "head")
    head_zip = tips.save(head, root / "headzip", format="official", name="h")
    cases: dict[str, tuple[str, str, str]] = {}

    def ours(case: str, edit, names: str = "config.json") -> None:
        shutil.copytree(root / "ours", root / case)
        _edit_json(root / case / "config.json", edit)
        cases[case] = ("load", str(root / case), names)

    def giant(cfg, where):
        cfg[where].update(width=16384, depth=64, heads=128, mlp_hidden=65536)

    ours("ours_giant_tower", lambda c: giant(c["model"], "vision"))
    ours("ours_text_max_len", lambda c: c["model"]["text"].update(max_len=10**9), "max_len")
    ours("ours_heads_zero", lambda c: c["model"]["vision"].update(heads=0), "heads")
    ours("ours_width_string", lambda c: c["model"]["vision"].update(width="wide"), "width")
    ours("ours_no_model", lambda c: c.pop("model"), "'model'")
    ours("ours_tokenizer_outside", lambda c: c.update(tokenizer="../../../../../../etc/hostname"), "tokenizer")
    shutil.copytree(root / "ours", root / "ours_not_json")
    (root / "ours_not_json" / "config.json").write_text('{"format": "tips", "model": ')
    cases["ours_not_json"] = ("load", str(root / "ours_not_json"), "config.json")

    shutil.copytree(root / "official", root / "official_giant")
    _edit_json(root / "official_giant" / "m_vision.tips.json", lambda c: giant(c["config"], "vision"))
    cases["official_sidecar_giant"] = ("load", str(root / "official_giant" / "m_vision.npz"), "m_vision.tips.json")
    shutil.copytree(root / "timm", root / "timm_giant")
    _edit_json(root / "timm_giant" / "m_timm.tips.json", lambda c: c["vision"].update(width=16384, depth=64, heads=128))
    cases["timm_sidecar_giant"] = ("load", str(root / "timm_giant" / "m_timm.safetensors"), "m_timm.tips.json")
    shutil.copytree(root / "hf", root / "hf_max_len")
    _edit_json(root / "hf_max_len" / "config.json", lambda c: (c["tips"].pop("model"), c["text_config"].update(max_position_embeddings=10**9)))
    cases["transformers_max_position_embeddings"] = ("load", str(root / "hf_max_len"), "config.json")
    shutil.copytree(root / "hf", root / "hf_giant")
    _edit_json(root / "hf_giant" / "config.json", lambda c: giant(c["tips"]["model"], "vision"))
    cases["transformers_giant_tower"] = ("load", str(root / "hf_giant"), "config.json")

    shutil.copytree(root / "head", root / "head_wide")
    _edit_json(root / "head_wide" / "config.json", lambda c: c["dpt"].update(width=65536))
    cases["head_folder_wide"] = ("load_head", str(root / "head_wide"), "config.json")
    shutil.copytree(root / "head", root / "head_no_dpt")
    _edit_json(root / "head_no_dpt" / "config.json", lambda c: c.pop("dpt"))
    cases["head_folder_no_dpt"] = ("load_head", str(root / "head_no_dpt"), "'dpt'")

    vision = Path(official["vision"])
    for case, member, write, names in (
        ("official_npy_header_1e12", "register_tokens.npy", _huge_header, "register_tokens.npy"),
        ("official_duplicate_member", "cls_token.npy", _duplicate, "cls_token.npy"),
    ):
        (root / case).mkdir()
        _replace_member(vision, root / case / vision.name, member, write)
        shutil.copy(official["text"], root / case)
        cases[case] = ("load", str(root / case / vision.name), names)
    (root / "zip_bomb").mkdir()
    _replace_member(head_zip, root / "zip_bomb" / head_zip.name, "dpt/convs_0/kernel.npy", _bomb)
    cases["head_zip_bomb"] = ("load_head", str(root / "zip_bomb" / head_zip.name), "dpt/convs_0/kernel.npy")
    return cases


CHILD = textwrap.dedent("""
    import json, sys
    import tips
    out = {}
    for case, (reader, path, _) in json.loads(sys.argv[1]).items():
        try:
            getattr(tips, reader)(path)
            out[case] = None
        except Exception as e:
            out[case] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))
""")
# The reader runs as the child of a wrapper, so RUSAGE_CHILDREN covers that one process and no earlier test's.
WRAPPER = textwrap.dedent("""
    import json, resource, subprocess, sys
    run = subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"rc": run.returncode, "stdout": run.stdout, "stderr": run.stderr[-3000:], "peak": peak}))
""")


@pytest.fixture(scope="module")
def refusals(tampered) -> tuple[dict[str, str | None], int]:
    """Every tampered copy read in one child process → ({case: the error, or None}, the child's peak RSS)."""
    env = dict(os.environ, TIPS_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", WRAPPER, CHILD, json.dumps(tampered)], capture_output=True, text=True,
                         env=env, timeout=300, check=True)  # fmt: skip
    result = json.loads(run.stdout)
    assert result["rc"] == 0, result["stderr"]
    assert result["peak"] > 50 << 20  # the reader's own peak (it imports torch), not the wrapper's
    return json.loads(result["stdout"].strip().splitlines()[-1]), result["peak"]


CASES = [
    "ours_giant_tower", "ours_text_max_len", "ours_heads_zero", "ours_width_string", "ours_no_model",
    "ours_tokenizer_outside", "ours_not_json", "official_sidecar_giant", "timm_sidecar_giant",
    "transformers_max_position_embeddings", "transformers_giant_tower", "head_folder_wide", "head_folder_no_dpt",
    "official_npy_header_1e12", "official_duplicate_member", "head_zip_bomb",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_tampered_file_is_refused_naming_the_file_and_field_before_allocating(case, tampered, refusals):
    errors, peak = refusals
    _, path, names = tampered[case]
    error = errors[case]
    assert error is not None, f"{case}: {path} was loaded"
    assert names in error, f"{case}: the refusal does not name {names!r}: {error}"
    assert "Traceback" not in error and "\n" not in error.strip()
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**30:.2f} GiB while reading the tampered files"


def test_every_tampered_case_is_exercised(tampered):
    assert sorted(tampered) == sorted(CASES)


@pytest.mark.parametrize("fmt", ["pretrained", "official", "timm", "transformers"])
def test_save_then_load_reads_every_model_format_back_exactly(fmt, tmp_path):
    model = _model()
    written = tips.save(model, tmp_path / fmt, **({"name": "m"} if fmt in ("official", "timm") else {}), format=fmt) \
        if fmt != "transformers" else _quiet_save(model, tmp_path / fmt)  # fmt: skip
    if fmt == "official":
        back = tips.load(written["vision"], text=written["text"])
    elif fmt == "timm":
        back = tips.load(written["weights"])
    else:
        back = tips.load(tmp_path / fmt)
    want = model.state_dict() if fmt != "timm" else {f"vision.{k}": v for k, v in model.vision.state_dict().items()}
    got = back.state_dict() if fmt != "timm" else {k: v for k, v in back.state_dict().items() if k.startswith("vision.")}
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    assert back.cfg.vision == model.cfg.vision


def _quiet_save(model, out):
    with pytest.warns(UserWarning):
        return tips.save(model, out, format="transformers")


@pytest.mark.parametrize("fmt", ["pretrained", "official", "transformers"])
def test_save_then_load_head_reads_every_head_format_back_exactly(fmt, tmp_path):
    head = DenseHead(make_config("depth", 192)).eval()
    options = {"model": _model()} if fmt == "transformers" else {}
    written = tips.save(head, tmp_path / fmt, format=fmt, **options)
    back = tips.load_head(written["folder"] if isinstance(written, dict) else written)
    assert back.cfg.width == head.cfg.width and back.task == head.task
    for key, value in head.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_detect_names_the_layout_each_writer_writes(tmp_path):
    from tips.formats.detect import detect
    from tips.formats.registry import HEAD_READERS, HEAD_WRITERS, MODEL_READERS, MODEL_WRITERS

    assert set(MODEL_READERS) == set(MODEL_WRITERS) - {"onnx"}  # ONNX is an inference graph, written only
    assert set(HEAD_READERS) == set(HEAD_WRITERS)
    model = _model()
    assert detect(tips.save(model, tmp_path / "ours")) == ("pretrained", frozenset({"model"}))
    assert detect(tips.save(model, tmp_path / "o", format="official", name="m")["vision"]).format == "official"
    assert detect(tips.save(model, tmp_path / "t", format="timm", name="m")["weights"]).format == "timm"
    head = DenseHead(make_config("depth", 192))
    assert detect(tips.save(head, tmp_path / "h")) == ("pretrained", frozenset({"head"}))
    assert detect(tips.save(head, tmp_path / "hz", format="official")) == ("official", frozenset({"head"}))
    with pytest.raises(ValueError, match="tips.load_head"):
        tips.load(tmp_path / "h")
