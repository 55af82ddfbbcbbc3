"""End-to-end pretraining runs: 2-rank accelerate launch, exact resume after SIGKILL, safe checkpoints."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from tips.io.recipes import RECIPES
import tips
from tips.train import checkpointing
from tips.train.checkpointer import read_tensors

TINY = [
    "loss.dino_k=128", "loss.ibot_k=128", "loss.head_hidden=64", "loss.head_bottleneck=32",
    "model.overrides={vision.depth: 1, text.depth: 1, vision.width: 64, vision.heads: 2, vision.mlp_hidden: 128,"
    " text.width: 64, text.heads: 2, text.mlp_hidden: 128}",
    "data.views.global_size=56", "data.views.local_size=28", "data.views.num_local=2", "data.shuffle_buffer=8",
    "run.batch_size=4", "run.log_every=1",
]


def write_shards(root: Path, shards: int = 4, per_shard: int = 8) -> str:
    """Small real shards: coloured noise images with an alt-text and two synthetic captions each."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with wds.TarWriter(str(root / f"shard-{s:06d}.tar")) as w:
            for i in range(per_shard):
                pixels = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, "JPEG")
                captions = [f"a noisy picture number {i} of shard {s}", f"shard {s} image {i}"]
                w.write({"__key__": f"{s}-{i}", "jpg": buf.getvalue(), "txt": f"IMG_{s}{i}.jpg",
                         "json": json.dumps({"synthetic_captions": captions}).encode()})
    return str(root / f"shard-{{000000..{shards - 1:06d}}}.tar")


def env() -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.pop("ACCELERATE_USE_CPU", None)
    return e


def run_train(args: list[str], launcher: list[str] | None = None, **kw) -> subprocess.Popen:
    cmd = (launcher or [sys.executable, "-m"]) + ["tips.cli.train"] + args
    return subprocess.Popen(cmd, env=kw.pop("env", env()), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def student_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return read_tensors(checkpoint, "model.")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return write_shards(tmp_path_factory.mktemp("shards"))


def test_two_cpu_processes_train_and_agree_on_weights(shards, tmp_path):
    e = env()
    e["ACCELERATE_USE_CPU"] = "1"
    # every value accelerate would otherwise default (and print a 4-line notice about) is given
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--num_cpu_threads_per_process", "1", "--main_process_port", "0", "-m"]
    out_dir = tmp_path / "run"
    proc = run_train([f"data.train={shards}", f"run.output_dir={out_dir}", "run.steps=3", "run.save_every=3",
                      "run.world_size=2", "data.num_workers=1", *TINY], launcher=launcher, env=e)
    out = finish(proc)
    assert "all 2 ranks hold identical weights" in out
    assert "had defaults used instead" not in out and "was set to a value of" not in out
    final = checkpointing.latest_checkpoint(out_dir)
    state = json.loads((final / "trainer.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 3 and state["parallel"] == "ddp"
    exported = tips.load(final / "export")
    sd = student_weights(final)
    assert torch.equal(exported.vision.pos_embed, sd["student.model.vision.pos_embed"])
    # both ranks wrote their share of the replicated tensors, in the one format every strategy writes
    assert sorted(p.name for p in (final / "state").iterdir()) == [
        "shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]


def test_world_size_mismatch_is_refused(shards, tmp_path):
    proc = run_train([f"data.train={shards}", f"run.output_dir={tmp_path}", "run.steps=1", "run.world_size=2", *TINY])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "run.world_size=2" in out


def test_resume_after_sigkill_reaches_the_same_weights(shards, tmp_path):
    common = [f"data.train={shards}", "run.steps=6", "run.save_every=2", "data.num_workers=2", *TINY]
    finish(run_train(common + [f"run.output_dir={tmp_path / 'straight'}"]))

    killed = tmp_path / "killed"
    proc = run_train(common + [f"run.output_dir={killed}", "run.save_every=2"])
    deadline = time.time() + 240
    while time.time() < deadline and not (killed / "checkpoints" / "step-00000004" / "trainer.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert checkpointing.latest_checkpoint(killed) is not None
    finish(run_train(common + [f"run.output_dir={killed}", "run.resume=latest"]))

    a = student_weights(tmp_path / "straight" / "checkpoints" / "step-00000006")
    b = student_weights(killed / "checkpoints" / "step-00000006")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
    ta = read_tensors(tmp_path / "straight" / "checkpoints" / "step-00000006", "teacher.")
    tb = read_tensors(killed / "checkpoints" / "step-00000006", "teacher.")
    assert ta.keys() == tb.keys() and ta
    assert all(torch.allclose(ta[k], tb[k], atol=1e-5, rtol=1e-4) for k in ta)


def test_an_interrupted_save_leaves_the_previous_checkpoint_loadable(shards, tmp_path):
    out = tmp_path / "run"
    finish(run_train([f"data.train={shards}", f"run.output_dir={out}", "run.steps=2", "run.save_every=2",
                      "data.num_workers=0", *TINY]))
    good = checkpointing.latest_checkpoint(out)
    # A kill during saving leaves only the temporary folder of the next step behind, half written.
    partial = checkpointing.checkpoint_root(out) / ".step-00000004.tmp"
    shutil.copytree(good / "state", partial / "state")
    (partial / "state" / "model.safetensors").write_bytes(b"truncated")
    assert checkpointing.latest_checkpoint(out) == good
    model = tips.load(good / "export")
    assert model.encode_image(torch.rand(1, 3, 56, 56)).cls_alt.shape == (1, 64)
    finish(run_train([f"data.train={shards}", f"run.output_dir={out}", "run.steps=3", "run.save_every=1",
                      "run.resume=latest", "data.num_workers=0", *TINY]))
    assert checkpointing.latest_checkpoint(out).name == "step-00000003"
    assert not partial.exists()


def test_demo_recipe_runs_end_to_end_and_its_export_loads_and_exports(tmp_path):
    scenes = tmp_path / "scenes"
    made = subprocess.run([sys.executable, "-c", "import sys; from tips_pipelines.scenes import main; sys.exit(main())",
                           "--out", str(scenes), "--num-pretrain", "64", "--num-train", "0", "--num-val", "0",
                           "--resolution", "64", "--shard-size", "16"], capture_output=True, text=True, env=env())
    assert made.returncode == 0, made.stderr[-2000:]
    recipe = RECIPES / "pretrain" / "demo_cpu.yaml"
    out = tmp_path / "run"
    finish(run_train(["--config", str(recipe), f"data.train={scenes}/pretrain/shard-{{000000..000003}}.tar",
                      f"run.output_dir={out}", "run.steps=2", "run.batch_size=4", "data.num_workers=1"]))
    model = tips.load(out / "final")
    assert model.cfg.variant == "tiny_p8" and model.temperature is not None
    exported = subprocess.run([sys.executable, "-m", "tips.cli.export", "--model", str(out / "final"), "--format", "official", "--out", str(tmp_path / "off"),
                               "--name", "demo"], capture_output=True, text=True, env=env())
    assert exported.returncode == 0, exported.stderr
    again = tips.load(tmp_path / "off" / "demo_vision.npz", text=tmp_path / "off" / "demo_text.npz", tokenizer="bpe")
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(model.encode_image(x).patch_tokens, again.encode_image(x).patch_tokens, atol=1e-5)
