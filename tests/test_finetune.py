"""Continued pretraining from released weights (docs/finetuning.md): a tiny model written in the official .npz
layout is fine-tuned with each recipe of configs/finetune/ on tiny scenes shards; the head warm-up, the CLS2
temperature rule, the retention guard and the export back to the official layout are checked."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from test_trainer import env

from tips.io.recipes import RECIPES
import tips
from tips.train.config import load_config
from tips.train.trainer import Trainer

RECIPES = RECIPES / "finetune"
SIZES = {"vision.depth": 2, "text.depth": 2, "vision.width": 64, "vision.heads": 2, "vision.mlp_hidden": 128,
         "text.width": 64, "text.heads": 2, "text.mlp_hidden": 128, "vision.patch_size": 8}
TINY_RUN = [
    "loss.dino_k=128", "loss.ibot_k=128", "loss.head_hidden=64", "loss.head_bottleneck=32",
    "data.views.global_size=64", "data.views.local_size=32", "data.views.num_local=2", "data.shuffle_buffer=8",
    "data.num_workers=0", "run.batch_size=4", "run.log_every=1", "run.save_every=1000", "run.mixed_precision=no",
    "model.tokenizer=bpe",
]
TAU = 0.02


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    made = subprocess.run([sys.executable, "-c", "import sys; from tips_pipelines.scenes import main; sys.exit(main())",
                           "--out", str(root), "--num-pretrain", "16", "--num-train", "0", "--num-val", "0",
                           "--resolution", "64", "--shard-size", "8"], capture_output=True, text=True, env=env())
    assert made.returncode == 0, made.stderr[-2000:]
    return root


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> dict[str, Path]:
    """A tiny model in the official layout: vision + text .npz with one temperature (no temperature_syn)."""
    torch.manual_seed(0)
    model = tips.create_model("tiny", tokenizer="bpe", **SIZES, **{"text.vocab_size": 49408})
    model.set_temperatures(TAU, None)
    return tips.save(model, tmp_path_factory.mktemp("official"), format="official", name="tiny")


def make_trainer(recipe: str, scenes: Path, official: dict[str, Path], out: Path, *overrides: str) -> Trainer:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    cfg = load_config(RECIPES / recipe, [
        f"model.init_from={official['vision']}", f"model.init_text={official['text']}",
        f"data.train={scenes}/pretrain/shard-{{000000..000001}}.tar", f"run.output_dir={out}", *TINY_RUN, *overrides])
    return Trainer(cfg)


def tower_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def heads_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    s = trainer.core.student
    return {f"{n}.{k}": v.detach().clone() for n in ("dino_head", "ibot_head")
            for k, v in getattr(s, n).state_dict().items()}


def record_after_steps(trainer: Trainer, take) -> list:
    """``take(trainer)`` after every optimiser step of ``fit``."""
    seen, original = [], trainer.after_step

    def after_step(result, schedule):
        original(result, schedule)
        seen.append(take(trainer))

    trainer.after_step = after_step
    return seen


def check_official_round_trip(final: Path, tmp: Path) -> None:
    model = tips.load(final)
    paths = tips.save(model, tmp, format="official", name="ft")
    again = tips.load(paths["vision"], text=paths["text"], tokenizer="bpe")
    x = torch.rand(2, 3, 64, 64)
    a, b = model.encode_image(x), again.encode_image(x)
    assert torch.allclose(a.patch_tokens, b.patch_tokens, atol=1e-5) and torch.allclose(a.cls_syn, b.cls_syn, atol=1e-5)
    assert torch.allclose(model.encode_text(["a red sphere"]), again.encode_text(["a red sphere"]), atol=1e-5)
    assert again.temperature == pytest.approx(model.temperature, rel=1e-6)


def test_captions_recipe_warms_the_heads_with_bit_identical_towers_then_exports_to_the_official_layout(
    scenes, official, tmp_path
):
    warmup = 2
    trainer = make_trainer("captions.yaml", scenes, official, tmp_path / "run", "run.steps=4",
                           f"finetune.head_warmup_steps={warmup}", "finetune.tower_warmup_steps=1")
    loaded = tips.load(official["vision"], text=official["text"], tokenizer="bpe")
    assert all(torch.equal(v, loaded.vision.state_dict()[k]) for k, v in trainer.model.vision.state_dict().items())
    # CLS1's temperature is the checkpoint's; the released layout has no temperature_syn, so CLS2 starts there too
    assert trainer.model.temperature == pytest.approx(TAU, rel=1e-6)
    assert torch.equal(trainer.model.logit_scale_syn, trainer.model.logit_scale_alt)
    # full EMA: the teacher's tower starts as an exact copy of the loaded one
    assert all(torch.equal(v, trainer.model.vision.state_dict()[k]) for k, v in trainer.teacher.vision.state_dict().items())
    towers0, heads0 = tower_state(trainer), heads_state(trainer)
    towers = record_after_steps(trainer, tower_state)
    heads = record_after_steps(trainer, heads_state)
    final = trainer.fit()
    assert len(towers) == 4
    for step in range(warmup):  # every tower tensor bit-identical through the warm-up, while the heads moved
        assert all(torch.equal(towers[step][k], towers0[k]) for k in towers0), step
        assert any(not torch.equal(heads[step][k], heads0[k]) for k in heads0), step
    assert any(not torch.equal(towers[warmup][k], towers0[k]) for k in towers0 if ".blocks." in k)
    check_official_round_trip(final, tmp_path / "official")


@pytest.mark.slow
def test_images_only_recipe_trains_without_the_contrastive_terms(scenes, official, tmp_path):
    trainer = make_trainer("images_only.yaml", scenes, official, tmp_path / "run", "run.steps=3",
                           "finetune.head_warmup_steps=1")
    text0 = {k: v.clone() for k, v in trainer.model.text.state_dict().items()}
    assert trainer.plan.terms == ("distill", "mask")
    final = trainer.fit()
    assert all(torch.equal(v, tips.load(final).text.state_dict()[k]) for k, v in text0.items())  # frozen text tower
    check_official_round_trip(final, tmp_path / "official")


@pytest.mark.slow
def test_pairs_only_recipe_trains_both_cls_with_the_retention_guard(scenes, official, tmp_path):
    trainer = make_trainer("pairs_only.yaml", scenes, official, tmp_path / "run", "run.steps=3")
    assert trainer.plan.terms == ("contrastive_alt", "contrastive_syn") and trainer.teacher is None
    retention, original = [], trainer.after_step

    def after_step(result, schedule):
        retention.append(float(result.losses["retention"]))
        original(result, schedule)

    trainer.after_step = after_step
    final = trainer.fit()
    assert len(retention) == 3 and retention[0] == pytest.approx(0.0, abs=1e-6) and retention[-1] > 0
    check_official_round_trip(final, tmp_path / "official")


def test_retention_guard_loss_is_zero_at_the_start_and_grows_as_the_tower_moves():
    from tips.train.retention import RetentionGuard

    for kind in ("cosine", "smooth_l1"):
        model = tips.create_model("tiny", tokenizer="bpe", **SIZES)
        guard = RetentionGuard(model.vision, kind)
        x = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            patches = model.vision.forward_features(x)[:, 2:]
            assert guard(x, patches).item() == pytest.approx(0.0, abs=1e-6)
            proj = model.vision.patch_embed.proj.weight
            proj.add_(torch.randn_like(proj))
            moved = model.vision.forward_features(x)[:, 2:]
            assert guard(x, moved).item() > 1e-4
            keep = torch.zeros(moved.shape[:2], dtype=torch.bool)
            assert guard(x, moved, keep).item() == 0.0  # nothing kept, nothing compared
        assert not any(p.requires_grad for p in guard.parameters())


# ------------------------------------------------------------------------------------------------- LoRA
LORA = ["finetune.lora_rank=4", "finetune.lora_alpha=8", "finetune.head_warmup_steps=0"]


def test_lora_trains_only_the_adapters_and_exports_merged_weights_equal_to_the_unmerged_model(
    scenes, official, tmp_path
):
    from safetensors import safe_open

    trainer = make_trainer("captions.yaml", scenes, official, tmp_path / "run", "run.steps=1", *LORA)
    before = tower_state(trainer)
    adapters = [k for k in before if ".lora_" in k]
    assert any("attn.qkv.lora_A" in k for k in adapters) and any("attn.lora_A" in k for k in adapters)  # in_proj
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == set(adapters)
    final = trainer.fit()
    after = tower_state(trainer)
    assert all(torch.equal(after[k], before[k]) for k in before if k not in adapters)
    assert any(not torch.equal(after[k], before[k]) for k in adapters if ".lora_B." in k)

    merged = tips.load(final)
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    live = trainer.model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = live.encode_image(x), merged.encode_image(x)
        assert (a.patch_tokens - b.patch_tokens).abs().max() <= 1e-5 and (a.cls_alt - b.cls_alt).abs().max() <= 1e-5
        assert (live.encode_text(["a blue cube"]) - merged.encode_text(["a blue cube"])).abs().max() <= 1e-5
    with safe_open(str(final / "adapters.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(adapters) and f.metadata()["rank"] == "4"
    check_official_round_trip(final, tmp_path / "official")


@pytest.mark.slow
def test_lora_resume_after_sigkill_is_bit_identical(scenes, official, tmp_path):
    import signal
    import time

    from test_trainer import finish, run_train

    from tips.train import checkpointing
    from tips.train.checkpointer import read_tensors

    common = ["--config", str(RECIPES / "captions.yaml"), f"model.init_from={official['vision']}",
              f"model.init_text={official['text']}", f"data.train={scenes}/pretrain/shard-{{000000..000001}}.tar",
              *TINY_RUN, *LORA, "finetune.head_warmup_steps=1", "run.steps=6", "run.save_every=2",
              "model.drop_path_rate=0.1"]
    finish(run_train(common + [f"run.output_dir={tmp_path / 'straight'}"]))
    killed = tmp_path / "killed"
    proc = run_train(common + [f"run.output_dir={killed}"])
    deadline = time.time() + 240
    while time.time() < deadline and not (killed / "checkpoints" / "step-00000002" / "trainer.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert checkpointing.latest_checkpoint(killed) is not None
    assert not (killed / "checkpoints" / "step-00000006").exists()  # killed mid-run
    finish(run_train(common + [f"run.output_dir={killed}", "run.resume=latest"]))
    for prefix in ("model.", "teacher."):
        a = read_tensors(tmp_path / "straight" / "checkpoints" / "step-00000006", prefix)
        b = read_tensors(killed / "checkpoints" / "step-00000006", prefix)
        assert a.keys() == b.keys() and any(".lora_B." in k for k in a)
        assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
