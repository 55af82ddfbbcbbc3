"""Build the pieces of a run from its config: model, student, teacher, data loaders."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ..data import Batch, DataConfig
from ..formats.loading import load
from ..models.heads import ProjectionHead
from ..models.tips import TIPS
from ..models.variants import get_variant, override_config
from ..models.tokenizers import build_tokenizer
from .config import TrainConfig
from .finite import NonFiniteWeightsError, describe, nonfinite_names
from .objective import TIPSObjective
from .plan import TrainPlan, heads_file, make_plan
from .lora import apply_lora
from .retention import RetentionGuard
from .student import TIPSStudent, TIPSTeacher
from .teacher import make_teacher

log = logging.getLogger(__name__)


def continued_temperatures(model: TIPS) -> None:
    """Start CLS1's temperature from the checkpoint's and CLS2's from its ``temperature_syn`` when it has one,
    else from the same value (released files carry one temperature); a checkpoint without any keeps the init."""
    tau, tau_syn = model.temperature, model.temperature_syn
    if tau is not None and tau_syn is None:
        log.info("init_from has no temperature_syn: CLS2 starts from CLS1's temperature %.4g", tau)
        with torch.no_grad():
            model.logit_scale_syn.copy_(model.logit_scale_alt)
    model.has_temperature = {"alt": True, "syn": True}


def build_model(cfg: TrainConfig, plan: TrainPlan) -> TIPS:
    """A TIPS model from the variant table, or initialised from any checkpoint ``tips.load`` reads."""
    m = cfg.model
    if m.init_from:
        model = load(m.init_from, text=m.init_text, tokenizer=m.tokenizer)
        bad = nonfinite_names(model.state_dict().items())
        if bad:
            raise NonFiniteWeightsError(f"model.init_from={m.init_from} holds {len(bad)} non-finite weight tensors "
                                        f"({describe(bad)}): fine-tune from a finite checkpoint")
        model.train()
        continued_temperatures(model)
        model_cfg = override_config(model.cfg, **{"vision.drop_path_rate": m.drop_path_rate})
        if model_cfg != model.cfg:  # rebuild so drop-path takes effect, then copy the weights over
            fresh = TIPS(model_cfg, tokenizer=model.tokenizer)
            fresh.load_state_dict(model.state_dict())
            fresh.has_temperature = {"alt": True, "syn": True}
            model = fresh
    else:
        model_cfg = get_variant(m.variant, **m.overrides, **{"vision.drop_path_rate": m.drop_path_rate})
        tokenizer = build_tokenizer(m.tokenizer)
        # A model trained from scratch gets exactly its tokenizer's vocabulary (32k official SentencePiece,
        # 49,408 for the bundled BPE) unless the config sets text.vocab_size itself.
        vocab = m.overrides.get("text.vocab_size") or tokenizer.vocab_size
        if vocab < tokenizer.vocab_size:
            raise ValueError(f"model.overrides.text.vocab_size={vocab} is smaller than the tokenizer's {tokenizer.vocab_size}")
        model_cfg = override_config(model_cfg, tokenizer=tokenizer.kind, **{"text.vocab_size": vocab})
        model = TIPS(model_cfg, tokenizer=tokenizer)
    if model.text is None:
        raise ValueError("pretraining needs a text tower: the init_from checkpoint has none (pass its text file)")
    if model.tokenizer.vocab_size > model.cfg.text.vocab_size:  # ids past the embedding table fail mid-step
        raise ValueError(
            f"model.tokenizer={m.tokenizer} has {model.tokenizer.vocab_size} tokens but the text tower of "
            f"{m.init_from} embeds {model.cfg.text.vocab_size}: set model.tokenizer to the checkpoint's own "
            "(e.g. the official SentencePiece .model)"
        )
    for name, p in model.named_parameters():
        if name.endswith(".gamma") and not m.layerscale_trainable:
            p.requires_grad_(False)  # the trained TIPS model has no LayerScale: keep γ = 1
    for tower in m.freeze:
        getattr(model, tower).requires_grad_(False)
    # Parameters an ablation never uses get no gradient, and DDP (find_unused_parameters=False) rejects those.
    if not plan.contrastive_alt:
        model.logit_scale_alt.requires_grad_(False)
    if not plan.contrastive_syn:  # the synthetic caption is not encoded at all
        model.logit_scale_syn.requires_grad_(False)
    if not plan.masked_view:
        model.vision.mask_token.requires_grad_(False)
    f = cfg.finetune
    if f.lora_rank > 0:  # adapters on both towers, every base weight frozen (before DDP/FSDP wrapping)
        apply_lora(model, f.lora_rank, f.lora_alpha, f.lora_targets)
    if m.grad_checkpointing:
        model.vision.set_grad_checkpointing(True)
        model.text.set_grad_checkpointing(True)
    return model


class TrainModule(nn.Module):
    """Student + objective in one module, so DDP/FSDP see every trainable parameter and buffer.

    The teacher is passed to ``forward`` rather than held: it is no part of what DDP syncs or what the optimiser
    and the student checkpoint hold (a head-only-EMA teacher even shares the student's tower).
    """

    def __init__(self, student: TIPSStudent, objective: TIPSObjective, retention: RetentionGuard | None = None,
                 retention_weight: float = 0.0) -> None:
        super().__init__()
        self.student = student
        self.objective = objective
        self.retention = retention  # the dense retention guard of a fine-tune (None: off)
        self.retention_weight = retention_weight

    def forward(
        self, batch: Batch, teacher: TIPSTeacher | None, teacher_temp: float, with_stats: bool = False
    ) -> dict[str, torch.Tensor]:
        """The student's passes, then the teacher's targets, then the loss terms (device tensors)."""
        out = self.student(batch)
        targets = teacher(batch.global_crop, out.patch_index) if teacher is not None else None
        losses = self.objective(self.student, out, targets, batch, teacher_temp, with_stats)
        if self.retention is not None:
            if out.plain_patches is None:
                raise ValueError("finetune.retention_weight > 0 needs a pass on the global crop: switch a contrastive "
                                 "term or loss.weights.mask on")
            losses["retention"] = self.retention(batch.global_crop, out.plain_patches, out.plain_keep)
            losses["loss"] = losses["loss"] + self.retention_weight * losses["retention"]
        return losses


def build_train_module(cfg: TrainConfig, plan: TrainPlan, model: TIPS, frozen_teacher: TIPS | None) -> TrainModule:
    if plan.matryoshka_dims and max(plan.matryoshka_dims) > model.width:
        raise ValueError(f"loss.matryoshka_dims={list(plan.matryoshka_dims)} exceed the embedding width "
                         f"{model.width} of model.variant={cfg.model.variant}")
    teacher_width = frozen_teacher.width if (frozen_teacher is not None and plan.feature_targets) else None
    f = cfg.finetune
    # the guard copies the tower as loaded, before any training step (or adapter) changes it
    guard = RetentionGuard(model.vision, f.retention_loss) if f.retention_weight > 0 else None
    student = TIPSStudent(model, plan, cfg.loss, teacher_width)
    return TrainModule(student, TIPSObjective(cfg.loss, plan, model.patch_size), guard, f.retention_weight)


def build_teacher(cfg: TrainConfig, plan: TrainPlan, student: TIPSStudent, frozen: TIPS | None) -> TIPSTeacher | None:
    """The plan's teacher: an EMA copy, head-only EMA (live student tower + EMA heads), a frozen checkpoint with
    its prototype heads, a frozen tower alone (feature distillation), or None."""
    if plan.teacher == "none":
        return None
    if plan.teacher in ("frozen_heads", "frozen_features"):
        assert frozen is not None
        if frozen.patch_size != student.model.patch_size:
            # The patch losses compare student and teacher tokens position by position on one image.
            raise ValueError(
                f"teacher.checkpoint={cfg.teacher.checkpoint} has patch size {frozen.patch_size} but the student "
                f"{student.model.patch_size}: distillation needs the same patch grid "
                f"(set model.overrides.vision.patch_size={frozen.patch_size})"
            )
        heads = _load_teacher_heads(cfg, student) if plan.teacher == "frozen_heads" else (None, None)
        teacher = TIPSTeacher(plan.teacher, frozen.vision, *heads)
        teacher.requires_grad_(False)
        return teacher.eval()
    dino = make_teacher(student.dino_head) if student.dino_head is not None else None
    ibot = make_teacher(student.ibot_head) if student.ibot_head is not None else None
    vision = student.model.vision if plan.teacher == "head_only_ema" else make_teacher(student.model.vision)
    return TIPSTeacher(plan.teacher, vision, dino, ibot)


def _load_teacher_heads(cfg: TrainConfig, student: TIPSStudent) -> tuple[nn.Module | None, nn.Module | None]:
    """The checkpoint's frozen DINO/iBOT heads, built with the teacher's shapes (its width may differ from the
    student's); only the prototype count K must match, since student and teacher logits are compared."""
    from safetensors.torch import load_file

    sd = load_file(str(heads_file(cfg.teacher.checkpoint)))
    heads = []
    for name in ("dino_head", "ibot_head"):
        own = getattr(student, name)
        if own is None:
            heads.append(None)
            continue
        prefix = f"heads.{name}."
        head_sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not head_sd:
            raise KeyError(f"teacher.checkpoint={cfg.teacher.checkpoint} has no {name} but this run's losses need one")
        head = _head_from_state_dict(head_sd)
        k_teacher, k_student = head.last_layer.out_features, own.last_layer.out_features
        if k_teacher != k_student:
            key = "loss.dino_k" if name == "dino_head" else "loss.ibot_k"
            raise ValueError(f"the teacher's {name} has {k_teacher} prototypes: set {key}={k_teacher} (now {k_student})")
        head.load_state_dict(head_sd)
        heads.append(make_teacher(head))
    return heads[0], heads[1]


def _head_from_state_dict(sd: dict[str, torch.Tensor]) -> ProjectionHead:
    """A :class:`ProjectionHead` shaped like ``sd``: mlp.{0,2,4}.weight (out, in), prototypes (K, bottleneck)."""
    linears = sorted(int(k.split(".")[1]) for k in sd if k.startswith("mlp.") and k.endswith(".weight"))
    first, prototypes = sd[f"mlp.{linears[0]}.weight"], sd["last_layer.parametrizations.weight.original1"]
    return ProjectionHead(first.shape[1], prototypes.shape[0], first.shape[0], prototypes.shape[1], len(linears))


def data_config(cfg: TrainConfig, sources: list[str], patch_size: int, resampled: bool | None = None,
                epoch_size: int | None = None, num_workers: int | None = None) -> DataConfig:
    d = cfg.data
    return DataConfig(
        sources=list(sources),
        weights=d.weights,
        resampled=d.resampled if resampled is None else resampled,
        batch_size=cfg.run.batch_size,
        num_workers=d.num_workers if num_workers is None else num_workers,
        epoch_size=d.epoch_size if epoch_size is None else epoch_size,
        seed=cfg.run.seed,
        shuffle_buffer=d.shuffle_buffer,
        shuffle_initial=max(1, min(d.shuffle_buffer, 500)),
        views=d.views,
        mask=d.mask,
        patch_size=patch_size,
        tokenizer=cfg.model.tokenizer,
        image_root=d.image_root,
    )


def default_epoch_size(cfg: TrainConfig) -> int:
    """Resampled streams are endless: one virtual epoch = 1000 batches per rank unless set."""
    return cfg.data.epoch_size or cfg.run.batch_size * 1000


def peak_lr(cfg: TrainConfig, world_size: int) -> float:
    """Configured LR, else 2.5e-4·sqrt(global_batch / 1024) (1e-3 at a global batch of 16k)."""
    if cfg.optim.lr is not None:
        return cfg.optim.lr
    return 2.5e-4 * math.sqrt(cfg.run.batch_size * world_size * cfg.run.grad_accum / 1024)


def build_modules(cfg: TrainConfig, plan: TrainPlan | None = None,
                  frozen_teacher: TIPS | None = None) -> tuple[TrainModule, TIPSTeacher | None]:
    """The run's student + objective and its teacher, as the trainer builds them (``plan`` defaults to the
    config's; ``frozen_teacher`` is the loaded ``teacher.checkpoint`` of a frozen-teacher run)."""
    plan = plan if plan is not None else make_plan(cfg)
    module = build_train_module(cfg, plan, build_model(cfg, plan), frozen_teacher)
    return module, build_teacher(cfg, plan, module.student, frozen_teacher)
