"""Typed training configuration: dataclasses loaded from YAML with dotted ``key=value`` overrides.

``python -m tips.cli.train --config configs/pretrain/demo_cpu.yaml run.steps=100 loss.weights.mask=0``
"""

from __future__ import annotations

import dataclasses
import typing
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from ..data.masking import MaskConfig
from ..data.views import ViewConfig
from ..io.overrides import ACCEPTED_FORMS, parse_override
from ..io.recipes import resolve_recipe
from ..models.variants import get_variant
from .choices import (
    CenterInit, Centering, Choice, CompileBackend, Contrastive, ContrastiveView, MimTarget, MixedPrecision, Optimizer,
    Parallel, Reduction, RetentionLoss, Spread, TeacherMode,
)
from .config_ranges import check_crop_sizes, check_mixed_precision, check_output_dir, check_ranges
from .plan import make_plan

log = logging.getLogger(__name__)


@dataclass
class ModelSection:
    variant: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"vision.depth": 6}
    tokenizer: str = "bpe"  # "bpe" or a SentencePiece .model path
    init_from: str | None = None  # any checkpoint tips.load reads (fine-tuning)
    init_text: str | None = None  # the text tower file of an init_from that comes as two (official .npz)
    freeze: list[str] = field(default_factory=list)  # towers to freeze: "vision", "text"
    drop_path_rate: float = 0.1
    layerscale_trainable: bool = False
    grad_checkpointing: bool = False


@dataclass
class LossWeights:
    contrastive_alt: float = 0.5
    contrastive_syn: float = 0.5
    distill: float = 1.0
    mask: float = 2.0
    spread: float = 0.0  # the spread-out regulariser (loss.spread), off by default


@dataclass
class LossSection:
    weights: LossWeights = field(default_factory=LossWeights)
    contrastive: Contrastive = Contrastive.softmax  # or "sigmoid" (SigLIP)
    contrastive_view: ContrastiveView = ContrastiveView.unmasked  # or "masked": CLS tokens from the masked pass (one student pass fewer)
    logit_scale_max: float = 500.0
    dino_k: int = 32768
    ibot_k: int = 32768
    head_hidden: int = 2048
    head_bottleneck: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    teacher_temp_warmup: float = 0.04
    teacher_temp_warmup_frac: float = 0.06
    centering: Centering = Centering.ema  # or "sinkhorn_knopp"
    center_momentum: float = 0.9
    center_init: CenterInit = CenterInit.first_batch  # or "zeros" (DINO); see tips.losses.distill.TeacherCentering
    ibot_plus_plus: bool = False  # TIPSv2: patch loss on all patches
    mim_target: MimTarget = MimTarget.features  # or "pixels" (MAE-style decoder)
    distill_reduction: Reduction = Reduction.mean
    # Truncatable embeddings (Matryoshka): both contrastive losses also on these nested prefixes of the CLS and
    # text embeddings, e.g. [768, 384, 192, 96] (list the full width to keep it trained); [] = off.
    matryoshka_dims: list[int] = field(default_factory=list)
    matryoshka_weights: list[float] | None = None  # one per width; None = equal
    spread: Spread = Spread.none  # "gor" (EmbeddingGemma) or "koleo" (DINOv2), weighted by loss.weights.spread
    spread_on: list[str] = field(default_factory=lambda: ["image", "text"])  # embeddings of the contrastive terms


@dataclass
class TeacherSection:
    mode: TeacherMode = TeacherMode.ema  # "ema" (full EMA), "head_only_ema" (TIPSv2), "frozen" (distillation)
    momentum: float = 0.994
    momentum_final: float = 1.0
    checkpoint: str | None = None  # frozen teacher: any checkpoint tips.load reads


@dataclass
class OptimSection:
    optimizer: Optimizer = Optimizer.adamw
    lr: float | None = None  # None: 2.5e-4 * sqrt(global_batch / 1024)
    min_lr: float = 1e-6
    warmup_frac: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    layerwise_decay: float = 1.0
    text_layerwise_decay: float | None = None  # the same rule over the text tower's blocks; None: layerwise_decay
    clip_grad: float | None = 3.0  # per sub-module gradient-norm cap; 0 or null: no clipping
    freeze_last_layer_frac: float = 0.0


@dataclass
class DataSection:
    """The input pipeline; ``views`` (crops, flips, colour jitter) and ``mask`` (shape, ratio, blocks) are the
    pipeline's own dataclasses, so every option is a YAML key (``data.views.num_local``, ``data.mask.mask_ratio``)."""

    train: list[str] = field(default_factory=list)  # shard patterns / tables, one source each
    weights: list[float] | None = None
    resampled: bool = True
    val: str | None = None  # held-out shard pattern for periodic validation
    image_root: str | None = None
    num_workers: int = 2
    shuffle_buffer: int = 1000
    epoch_size: int | None = None  # samples per rank per virtual epoch
    views: ViewConfig = field(default_factory=ViewConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)


@dataclass
class RunSection:
    output_dir: str = "runs/tips"
    steps: int = 1000
    batch_size: int = 64  # per process
    grad_accum: int = 1
    mixed_precision: MixedPrecision = MixedPrecision.no  # "no", "bf16", "fp16"
    seed: int = 0
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    # "latest" or a checkpoint folder. None by default: a run started again into a folder that holds checkpoints
    # is refused (continue it with run.resume=latest, or start over with run.force) rather than silently
    # continuing a job whose config may have changed.
    resume: str | None = None
    force: bool = False  # start afresh in a folder that holds an earlier run, deleting its contents (--force)
    compile: bool = False  # torch.compile each transformer block and head (parameter names unchanged)
    compile_backend: CompileBackend = CompileBackend.inductor  # "aot_eager" compiles in seconds (tests); "inductor" is the fast one
    val_every: int = 0
    val_batches: int = 4
    max_nonfinite: int = 10
    world_size: int | None = None  # when set, the launch must provide exactly this many processes
    export_teacher: bool = False
    parallel: Parallel = Parallel.ddp  # "fsdp": FSDP2 per block, sharded EMA teacher (docs/scaling.md); one process: "ddp" is single
    reshard_after_forward: bool = True  # fsdp: free gathered block weights after forward (re-gather in backward)
    peak_tflops: float | None = None  # per-device peak for perf/mfu; None: looked up from the GPU name


@dataclass
class FinetuneSection:
    """Continued pretraining from released weights (docs/finetuning.md)."""

    head_warmup_steps: int = 0  # towers' LR 0 while the fresh DINO/iBOT heads warm up (tips.train.warmup)
    tower_warmup_steps: int = 0  # then the towers' own linear warm-up
    retention_weight: float = 0.0  # dense retention guard: patch features kept close to the original's
    retention_loss: RetentionLoss = RetentionLoss.cosine  # or "smooth_l1" (on L2-normalised patch tokens)
    lora_rank: int = 0  # > 0: LoRA adapters (peft) instead of full fine-tuning (tips.train.lora)
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc1", "fc2"])


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    optim: OptimSection = field(default_factory=OptimSection)
    data: DataSection = field(default_factory=DataSection)
    run: RunSection = field(default_factory=RunSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)


def load_config(
    path: str | Path | list[str | Path] | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """YAML file(s) merged in order (e.g. a recipe, then a model file) + dotted overrides → a validated config.
    Each path may name a bundled recipe instead (``pretrain/demo_cpu``; :func:`tips.io.resolve_recipe`).

    Unknown keys raise an error naming them (OmegaConf structured configs reject them).
    """
    cfg = OmegaConf.structured(TrainConfig)
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    for p in paths:
        recipe = resolve_recipe(p)  # a path, or a bundled recipe's name
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(recipe))
        except OmegaConfBaseException as e:
            raise ValueError(f"config file {recipe}: {_merge_error(e, cfg)}") from None
    for override in overrides or []:
        try:
            cfg = OmegaConf.merge(cfg, _parse_override(override, cfg))
        except OmegaConfBaseException as e:
            reason = _merge_error(e, cfg)
            plain = isinstance(e, ConfigKeyError) or "expected one of" in reason  # the choices say it already
            forms = "" if plain else f". Accepted forms: {ACCEPTED_FORMS}{SHARD_LIST_HINT}"
            raise ValueError(f"override {override!r}: {reason}{forms}") from None
    out: TrainConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(out)
    return out


def _merge_error(error: OmegaConfBaseException, cfg: Any) -> str:
    """OmegaConf's multi-line merge error as one clause: the unknown key with the keys its section has, or the
    value that does not fit the field's type."""
    key = getattr(error, "full_key", None) or ""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, ConfigKeyError) and key:
        section, _, _ = key.rpartition(".")
        node = OmegaConf.select(cfg, section) if section else cfg
        known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else ""
        return f"no key {key}" + (f" (the keys of {section or 'the config'}: {known})" if known else "")
    return f"{key}: {reason}" if key else reason


# Flat data keys of earlier releases; the options now live in data.views / data.mask.
_MOVED = {f"data.{k}": f"data.views.{k}" for k in
          ("global_size", "global_scale", "local_size", "local_scale", "num_local", "color_jitter")}
_MOVED.update({"data.mask_ratio": "data.mask.mask_ratio", "data.mask_shape": "data.mask.mask_shape"})
_LIST_KEYS = ("data.train",)  # lists of shard patterns, whose brace expressions are not YAML
SHARD_LIST_HINT = "; shard lists as data.train=path/shard-{000..009}.tar or data.train=[a-{000..009}.tar, b.tar]"


def _parse_override(override: str, base=None):
    """One ``key=value`` override → a config fragment (:func:`tips.io.overrides.parse_override`), with the keys of
    earlier releases renamed and ``data.train`` read as a list of shard patterns."""
    key, sep, value = override.partition("=")
    if sep and key in _MOVED:
        log.warning("override %s: the key is now %s (the old name still works)", key, _MOVED[key])
        override = f"{_MOVED[key]}={value}"
    return parse_override(override, base, _LIST_KEYS, SHARD_LIST_HINT)


CHOICE_KEYS = ("loss.contrastive", "loss.contrastive_view", "loss.centering", "loss.center_init", "loss.mim_target",
               "loss.distill_reduction", "loss.spread", "teacher.mode", "optim.optimizer", "run.mixed_precision",
               "run.compile_backend", "run.parallel", "finetune.retention_loss")


def _choice_type(section: str, leaf: str) -> type[Choice]:
    """The Enum of a choice field, read from the dataclass annotations (``from __future__`` keeps them as text)."""
    section_type = {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)}[section]  # type: ignore[misc]
    hints = typing.get_type_hints(section_type)
    return hints[leaf]


def validate(cfg: TrainConfig) -> None:
    """Choices that would otherwise fail deep inside a run, checked up front with the key named."""
    for key in CHOICE_KEYS:  # OmegaConf checks them while reading; a TrainConfig built in Python is checked here
        section, _, leaf = key.partition(".")
        value = getattr(getattr(cfg, section), leaf)
        allowed = [m.value for m in _choice_type(section, leaf)]
        if str(value) not in allowed:
            raise ValueError(f"{key}={value!r}: expected one of {', '.join(allowed)}")
    if cfg.teacher.mode == "frozen" and not cfg.teacher.checkpoint:
        raise ValueError("teacher.mode=frozen needs teacher.checkpoint=<any checkpoint tips.load reads>")
    if not cfg.data.train:
        raise ValueError("data.train is empty: give at least one shard pattern, e.g. data.train=[data/shard-{000000..000009}.tar]")
    bad = [t for t in cfg.model.freeze if t not in ("vision", "text")]
    if bad:
        raise ValueError(f"model.freeze={bad}: only 'vision' and 'text' can be frozen")
    check_ranges(cfg)  # every numeric field, key and accepted range named
    check_crop_sizes(cfg, _patch_size(cfg))
    check_mixed_precision(cfg.run.mixed_precision, cuda=torch.cuda.is_available()
                          and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes"))
    check_output_dir(cfg.run.output_dir)
    f = cfg.finetune
    if (f.head_warmup_steps or f.retention_weight or f.lora_rank) and not cfg.model.init_from:
        raise ValueError("finetune.head_warmup_steps / retention_weight / lora_rank need model.init_from=<checkpoint>")
    make_plan(cfg)  # loss terms, views and teacher that cannot train together fail here, keys named


def _patch_size(cfg: TrainConfig) -> int | None:
    """The patch size every crop must hold at least once: the variant's with its overrides; None with
    ``model.init_from`` (the checkpoint decides, and it is not read while the config loads)."""
    if cfg.model.init_from:
        return None
    try:
        return get_variant(cfg.model.variant, **cfg.model.overrides).vision.patch_size
    except (KeyError, TypeError, ValueError):
        return None  # an unknown variant or override fails with its own message when the model is built


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
