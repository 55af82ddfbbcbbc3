"""Trainer options, each run in-process for a few steps on tiny shards: distillation from a frozen teacher,
fine-tuning and freezing, gradient accumulation, validation, non-finite losses, precision and compile,
optimiser choices, TensorBoard scalars and the head-only EMA teacher."""

import json
import math
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file
from test_trainer import TINY, write_shards

import tips
from tips.train import checkpointing
from tips.train.checkpointer import read_tensors
from tips.train.config import load_config
from tips.train.trainer import NonFiniteLossError, Trainer
from tips.train.validation import validate

# A student half the width of the TINY teacher (64): distillation must map 32 → 64.
SMALL = [
    "model.overrides={vision.depth: 1, text.depth: 1, vision.width: 32, vision.heads: 2, vision.mlp_hidden: 64,"
    " text.width: 32, text.heads: 2, text.mlp_hidden: 64}",
]
DISTILL = ["teacher.mode=frozen", "data.mask.mask_ratio=0.0", "loss.ibot_plus_plus=true"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return write_shards(tmp_path_factory.mktemp("shards"), shards=2)


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def make_trainer(shards: str, out: Path, *overrides: str, steps: int = 2) -> Trainer:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    cfg = load_config(None, [f"data.train={shards}", f"run.output_dir={out}", f"run.steps={steps}",
                             "run.save_every=1000", "data.num_workers=0", *TINY, *overrides])
    return Trainer(cfg)


def record_losses(trainer: Trainer, corrupt=None) -> list[dict[str, float]]:
    """Wrap the objective so every micro-batch's loss terms are recorded; ``corrupt(call) → factor`` (e.g.
    NaN) multiplies them, as a diverging step would."""
    objective = trainer.core.objective
    original = objective.forward
    history: list[dict[str, float]] = []

    def forward(*args, **kwargs):
        losses = original(*args, **kwargs)
        factor = corrupt(len(history)) if corrupt is not None else None
        if factor is not None:
            losses = {k: v * factor for k, v in losses.items()}
        history.append({k: float(v.detach()) for k, v in losses.items()})
        return losses

    objective.forward = forward
    return history


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def teacher_run(shards, tmp_path_factory) -> Path:
    """The ``final/`` export of a 1-step TINY run (width 64): towers + DINO/iBOT heads as extra tensors."""
    final = make_trainer(shards, tmp_path_factory.mktemp("teacher"), steps=1).fit()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return final


# --------------------------------------------------------------------------- distillation
@pytest.mark.parametrize("as_file", [False, True], ids=["folder", "safetensors_file"])
def test_distillation_from_our_checkpoint_uses_the_teachers_heads_and_leaves_them_frozen(
    shards, teacher_run, tmp_path, as_file
):
    checkpoint = teacher_run / "model.safetensors" if as_file else teacher_run
    trainer = make_trainer(shards, tmp_path, *DISTILL, f"teacher.checkpoint={checkpoint}", *SMALL)
    saved = load_file(str(teacher_run / "model.safetensors"))
    teacher = trainer.teacher
    assert trainer.core.student.feature_proj is None and teacher.dino_head is not None
    assert teacher.dino_head.mlp[0].in_features == 64 and trainer.core.student.dino_head.mlp[0].in_features == 32
    for name in ("dino_head", "ibot_head"):
        head = getattr(teacher, name).state_dict()
        assert all(torch.equal(v, saved[f"heads.{name}.{k}"]) for k, v in head.items())
    before = snapshot(teacher)
    losses = record_losses(trainer)
    trainer.fit()
    assert same(snapshot(teacher), before)
    assert torch.equal(teacher.vision.pos_embed, saved["vision.pos_embed"])
    for step in losses:
        assert all(torch.isfinite(torch.tensor(v)) for v in step.values())
        assert step["distill"] > 0 and step["mask"] > 0


def test_distillation_from_released_weights_trains_a_smaller_student_with_the_feature_loss(
    shards, teacher_run, tmp_path
):
    paths = tips.save(tips.load(teacher_run), tmp_path / "official", format="official", name="t")
    assert tips.load(paths["vision"]).text is None  # the teacher needs only its image tower
    trainer = make_trainer(shards, tmp_path / "run", *DISTILL, f"teacher.checkpoint={paths['vision']}", *SMALL)
    student = trainer.core.student
    assert student.dino_head is None and student.ibot_head is None and trainer.teacher.dino_head is None
    assert student.feature_proj["cls"].weight.shape == (64, 32) and student.feature_proj["patch"].weight.shape == (64, 32)
    teacher_before, student_before = snapshot(trainer.teacher), snapshot(student)
    losses = record_losses(trainer)
    trainer.fit()
    assert same(snapshot(trainer.teacher), teacher_before)
    after = snapshot(student)
    for name in ("model.vision.blocks.0.attn.qkv.weight", "feature_proj.cls.weight", "feature_proj.patch.weight"):
        assert not torch.equal(after[name], student_before[name]), name
    for step in losses:
        assert all(torch.isfinite(torch.tensor(v)) for v in step.values())
        assert 0 < step["distill"] <= 2 and 0 < step["mask"] <= 2  # 1 − cos lies in [0, 2]


def test_a_teacher_with_another_patch_grid_is_refused_with_a_clear_error(shards, teacher_run, tmp_path):
    other_patch = ["model.overrides={vision.depth: 1, text.depth: 1, vision.width: 32, vision.heads: 2,"
                   " vision.mlp_hidden: 64, vision.patch_size: 8, text.width: 32, text.heads: 2, text.mlp_hidden: 64}"]
    with pytest.raises(ValueError, match="patch size 14 but the student 8"):
        make_trainer(shards, tmp_path, *DISTILL, f"teacher.checkpoint={teacher_run}", *other_patch)


# --------------------------------------------------------------------------- fine-tuning
def test_init_from_starts_the_student_from_the_checkpoint(shards, teacher_run, tmp_path):
    trainer = make_trainer(shards, tmp_path, f"model.init_from={teacher_run}", "optim.lr=0.0", steps=1)
    saved = load_file(str(teacher_run / "model.safetensors"))
    assert torch.equal(trainer.model.vision.pos_embed, saved["vision.pos_embed"])
    final = load_file(str(trainer.fit() / "model.safetensors"))
    towers = [k for k in saved if not k.startswith("heads.")]
    assert towers and all(torch.equal(final[k], saved[k]) for k in towers)


def test_freezing_the_image_tower_keeps_it_while_the_text_tower_trains(shards, teacher_run, tmp_path):
    trainer = make_trainer(shards, tmp_path, f"model.init_from={teacher_run}", "model.freeze=[vision]",
                           "optim.lr=1e-3", "optim.warmup_frac=0")
    saved = load_file(str(teacher_run / "model.safetensors"))
    final = load_file(str(trainer.fit() / "model.safetensors"))
    vision = [k for k in saved if k.startswith("vision.")]
    assert vision and all(torch.equal(final[k], saved[k]) for k in vision)
    assert not torch.equal(final["text.transformer.resblocks.0.attn.in_proj_weight"],
                           saved["text.transformer.resblocks.0.attn.in_proj_weight"])


def test_init_from_a_text_tower_smaller_than_the_tokenizer_is_refused(shards, tmp_path):
    small_vocab = tips.create_model("tiny", **{"vision.depth": 1, "text.depth": 1, "text.vocab_size": 1000})
    tips.save(small_vocab, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="model.tokenizer=bpe has 49408 tokens .* embeds 1000"):
        make_trainer(shards, tmp_path / "run", f"model.init_from={tmp_path / 'ckpt'}")


# --------------------------------------------------------------------------- accumulation, validation, logs
def test_grad_accum_takes_one_optimiser_step_per_run_step_and_reads_two_batches(shards, tmp_path):
    trainer = make_trainer(shards, tmp_path, "run.grad_accum=2", "run.save_every=2", steps=2)
    trainer.fit()
    state = json.loads((checkpointing.latest_checkpoint(tmp_path) / "trainer.json").read_text())
    assert state["step"] == 2 and state["data_positions"] == [4]
    steps = {int(s["step"]) for s in trainer.optimizer.optimizer.state.values()}
    assert steps == {2}


def test_validation_reports_contrastive_loss_and_recall_for_both_cls(shards, tmp_path):
    trainer = make_trainer(shards, tmp_path, "run.val_batches=2", f"data.val={shards}")
    metrics = validate(trainer.model, trainer.validation_batches())
    assert metrics["val/samples"] == 8
    for cls in ("alt", "syn"):
        assert 0 < metrics[f"val/contrastive_{cls}"] < 10
        assert 0 <= metrics[f"val/t2i_r1_{cls}"] <= 1


def test_tensorboard_holds_every_loss_term_temperature_rate_and_validation_metric(shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = make_trainer(shards, tmp_path, "run.val_every=1", f"data.val={shards}", "run.val_batches=1")
    trainer.fit()
    events = EventAccumulator(str(next((tmp_path / "tips").glob("events.out.tfevents.*"))))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {
        "loss/loss", "loss/contrastive_alt", "loss/contrastive_syn", "loss/distill", "loss/mask",
        "temperature/alt", "temperature/syn", "lr", "samples_per_s", "data_wait_fraction", "nonfinite_steps",
        "val/contrastive_alt", "val/contrastive_syn", "val/t2i_r1_alt", "val/t2i_r1_syn",
        "teacher/distill_entropy", "teacher/distill_usage", "teacher/mask_entropy", "teacher/mask_usage",
    }  # fmt: skip
    assert expected <= tags, expected - tags
    assert [e.step for e in events.Scalars("loss/distill")] == [1, 2]
    assert [e.step for e in events.Scalars("val/t2i_r1_alt")] == [1, 2]
    assert events.Scalars("temperature/alt")[0].value == pytest.approx(0.07, rel=0.05)
    loss_cfg = trainer.cfg.loss
    for term, k in (("distill", loss_cfg.dino_k), ("mask", loss_cfg.ibot_k)):
        # entropies in nats: 0 < mean row entropy ≤ entropy of the mean row ≤ log K
        entropy, usage = (events.Scalars(f"teacher/{term}_{s}")[-1].value for s in ("entropy", "usage"))
        assert 0 < entropy <= usage + 1e-4 <= math.log(k) + 1e-3


# --------------------------------------------------------------------------- non-finite losses
def test_non_finite_steps_are_skipped_and_counted(shards, tmp_path):
    trainer = make_trainer(shards, tmp_path, "run.save_every=3", steps=3)
    before, teacher_before = snapshot(trainer.core), snapshot(trainer.teacher)
    record_losses(trainer, corrupt=lambda call: float("inf"))
    trainer.fit()
    assert trainer.nonfinite_total == 3 and not trainer.optimizer.optimizer.state
    assert same({k: v for k, v in snapshot(trainer.core).items() if "center" not in k},
                {k: v for k, v in before.items() if "center" not in k})
    assert same(snapshot(trainer.teacher), teacher_before)
    state = json.loads((checkpointing.latest_checkpoint(tmp_path) / "trainer.json").read_text())
    assert state["nonfinite_total"] == 3


def test_a_non_finite_micro_batch_skips_the_whole_accumulated_step(shards, tmp_path):
    trainer = make_trainer(shards, tmp_path, "run.grad_accum=2", "optim.lr=1e-3", "optim.warmup_frac=0", steps=1)
    params = {k: v.detach().clone() for k, v in trainer.core.named_parameters()}
    record_losses(trainer, corrupt=lambda call: float("nan") if call == 0 else None)
    trainer.fit()
    assert trainer.nonfinite_total == 1
    assert all(torch.equal(p, params[k]) for k, p in trainer.core.named_parameters())


def test_more_non_finite_steps_in_a_row_than_allowed_stop_the_run(shards, tmp_path):
    bad_calls = {0, 1, 3, 4}  # a finite step in between resets the count
    trainer = make_trainer(shards, tmp_path, "run.max_nonfinite=2", steps=5)
    record_losses(trainer, corrupt=lambda call: float("nan") if call in bad_calls else None)
    trainer.fit()
    assert trainer.nonfinite_total == 4

    trainer = make_trainer(shards, tmp_path / "diverged", "run.max_nonfinite=2", steps=5)
    record_losses(trainer, corrupt=lambda call: float("nan"))
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a non-finite loss"):
        trainer.fit()
    assert trainer.step == 2  # stopped during its third step (0, 1, 2)


# --------------------------------------------------------------------------- precision, compile, optimisers
def test_bf16_mixed_precision_runs_a_step_on_cpu_with_finite_losses(shards, tmp_path):
    trainer = make_trainer(shards, tmp_path, "run.mixed_precision=bf16", steps=1)
    dtypes = []
    trainer.model.vision.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    losses = record_losses(trainer)
    trainer.fit()
    assert torch.bfloat16 in dtypes
    assert all(torch.isfinite(torch.tensor(v)) for v in losses[0].values())


@pytest.mark.slow  # inductor compiles the towers on CPU: tens of seconds
def test_compiled_student_trains_and_keeps_its_parameter_names(shards, tmp_path):
    trainer = make_trainer(shards, tmp_path, "run.compile=true", "run.save_every=1", steps=1)
    losses = record_losses(trainer)
    trainer.fit()
    assert all(torch.isfinite(torch.tensor(v)) for v in losses[0].values())
    sd = read_tensors(checkpointing.latest_checkpoint(tmp_path), "model.")
    assert "student.model.vision.pos_embed" in sd


def test_adafactor_with_layerwise_lr_decay_runs_and_scales_the_image_tower_lr(shards, tmp_path):
    # text_layerwise_decay=1: the text tower keeps its full LR, so it is the yardstick for the image tower's decay
    trainer = make_trainer(shards, tmp_path, "optim.optimizer=adafactor", "optim.layerwise_decay=0.8",
                           "optim.text_layerwise_decay=1.0", "optim.lr=1e-3", "optim.warmup_frac=0")
    from timm.optim import AdafactorBigVision

    assert isinstance(trainer.optimizer.optimizer, AdafactorBigVision)
    before = trainer.model.vision.blocks[0].attn.qkv.weight.detach().clone()
    losses = record_losses(trainer)
    trainer.fit()
    assert all(torch.isfinite(torch.tensor(v)) for step in losses for v in step.values())
    assert not torch.equal(trainer.model.vision.blocks[0].attn.qkv.weight, before)
    by_name = {n: g for g in trainer.optimizer.param_groups for n in [id(p) for p in g["params"]]}
    vision = trainer.model.vision
    ratio = by_name[id(vision.patch_embed.proj.weight)]["lr"] / by_name[id(trainer.model.text.token_embedding.weight)]["lr"]
    assert ratio == pytest.approx(0.8**2)  # depth 1: embeddings are layer 0 of 1 + 1


# --------------------------------------------------------------------------- head-only EMA teacher
def test_head_only_ema_moves_the_heads_shares_the_tower_and_resumes_exactly(shards, tmp_path):
    common = ["teacher.mode=head_only_ema", "run.save_every=2", "optim.lr=1e-3", "optim.warmup_frac=0"]
    straight = make_trainer(shards, tmp_path / "straight", *common, steps=4)
    assert straight.teacher.vision is straight.model.vision
    heads_before = snapshot(straight.teacher.dino_head)
    straight.fit()
    moved = snapshot(straight.teacher.dino_head)
    student_head = snapshot(straight.core.student.dino_head)
    assert not same(moved, heads_before) and not same(moved, student_head)
    saved = read_tensors(tmp_path / "straight" / "checkpoints" / "step-00000004", "teacher.")
    assert saved and not any(k.startswith("vision.") for k in saved)

    class Killed(Exception):
        pass

    def kill_at_third_step(call: int) -> None:
        if call == 2:
            raise Killed

    interrupted = make_trainer(shards, tmp_path / "resumed", *common, steps=4)
    record_losses(interrupted, corrupt=kill_at_third_step)
    with pytest.raises(Killed):
        interrupted.fit()
    resumed = make_trainer(shards, tmp_path / "resumed", *common, "run.resume=latest", steps=4)
    resumed.fit()
    assert resumed.resumed_from.name == "step-00000002"
    a = read_tensors(tmp_path / "straight" / "checkpoints" / "step-00000004", "teacher.")
    b = read_tensors(tmp_path / "resumed" / "checkpoints" / "step-00000004", "teacher.")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    a = read_tensors(tmp_path / "straight" / "checkpoints" / "step-00000004", "model.")
    b = read_tensors(tmp_path / "resumed" / "checkpoints" / "step-00000004", "model.")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
