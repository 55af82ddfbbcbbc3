"""The valid range of every numeric field of a :class:`~tips.train.config.TrainConfig`, checked when it loads.

A value outside its range fails before a model is built, in one line naming the key, the value and the range:
``optim.clip_grad=-1.0: expected > 0, or 0 / null for no clipping``. Without these checks a negative clip turns
every step into gradient ascent, a NaN weight silently switches its loss term off (``nan > 0`` is False), a zero
interval divides by zero after the first step, and a too-long output folder fails only after the model is built.
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from typing import Any, Callable

# Longest path a run writes below its output folder (a checkpoint temporary's tensor file), with room to spare.
_LONGEST_INSIDE = len("checkpoints/.step-00000000.tmp-4194304/export_teacher/state/"
                      "shard-00001-model-00001-of-00001.safetensors") + 32


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive(v: Any) -> bool:
    return _finite(v) and v > 0


def non_negative(v: Any) -> bool:
    return _finite(v) and v >= 0


def unit(v: Any) -> bool:
    """In [0, 1]."""
    return _finite(v) and 0 <= v <= 1


def below_one(v: Any) -> bool:
    """In [0, 1)."""
    return _finite(v) and 0 <= v < 1


def at_least(n: float) -> Callable[[Any], bool]:
    return lambda v: _finite(v) and v >= n


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


# key → (check, the accepted range in words)
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.drop_path_rate": (below_one, "in [0, 1)"),
    "loss.weights.contrastive_alt": (_finite, "a finite number >= 0 (0 = off)"),  # negative: the plan names it
    "loss.weights.contrastive_syn": (_finite, "a finite number >= 0 (0 = off)"),  # negative: the plan names it
    "loss.weights.distill": (_finite, "a finite number >= 0 (0 = off)"),  # negative: the plan names it
    "loss.weights.mask": (_finite, "a finite number >= 0 (0 = off)"),  # negative: the plan names it
    "loss.weights.spread": (_finite, "a finite number >= 0 (0 = off)"),  # negative: the plan names it
    "loss.logit_scale_max": (at_least(1.0), "a finite number >= 1 (its log caps the logit scale)"),
    "loss.dino_k": (at_least(1), "an integer >= 1"),
    "loss.ibot_k": (at_least(1), "an integer >= 1"),
    "loss.head_hidden": (at_least(1), "an integer >= 1"),
    "loss.head_bottleneck": (at_least(1), "an integer >= 1"),
    "loss.student_temp": (positive, "a finite number > 0"),
    "loss.teacher_temp": (positive, "a finite number > 0"),
    "loss.teacher_temp_warmup": (positive, "a finite number > 0"),
    "loss.teacher_temp_warmup_frac": (unit, "in [0, 1]"),
    "loss.center_momentum": (unit, "in [0, 1]"),
    "teacher.momentum": (unit, "in [0, 1]"),
    "teacher.momentum_final": (unit, "in [0, 1]"),
    "optim.lr": (optional(non_negative), "a finite number >= 0, or null for the square-root batch rule"),
    "optim.min_lr": (non_negative, "a finite number >= 0"),
    "optim.warmup_frac": (unit, "in [0, 1]"),
    "optim.eps": (positive, "a finite number > 0"),
    "optim.weight_decay": (non_negative, "a finite number >= 0"),
    "optim.weight_decay_end": (non_negative, "a finite number >= 0"),
    "optim.layerwise_decay": (lambda v: _finite(v) and 0 < v <= 1, "in (0, 1]"),
    "optim.text_layerwise_decay": (optional(lambda v: _finite(v) and 0 < v <= 1), "in (0, 1], or null for optim.layerwise_decay"),
    "optim.clip_grad": (optional(non_negative), "> 0, or 0 / null for no clipping"),
    "optim.freeze_last_layer_frac": (unit, "in [0, 1]"),
    "data.num_workers": (at_least(0), "an integer >= 0"),
    "data.shuffle_buffer": (at_least(0), "an integer >= 0"),
    "data.epoch_size": (optional(at_least(1)), "an integer >= 1, or null"),
    "data.views.num_local": (at_least(0), "an integer >= 0"),
    "data.views.hflip_p": (unit, "in [0, 1]"),
    "data.views.jitter_p": (unit, "in [0, 1]"),
    "data.views.grayscale_p": (unit, "in [0, 1]"),
    "data.mask.min_block_area": (at_least(1), "an integer >= 1"),
    "data.mask.max_block_fraction": (lambda v: _finite(v) and 0 < v <= 1, "in (0, 1]"),
    "run.steps": (at_least(1), "an integer >= 1"),
    "run.batch_size": (at_least(1), "an integer >= 1"),
    "run.grad_accum": (at_least(1), "an integer >= 1"),
    "run.seed": (at_least(0), "an integer >= 0"),
    "run.log_every": (at_least(1), "an integer >= 1"),
    "run.save_every": (at_least(1), "an integer >= 1 (run.steps or more: only the final export)"),
    "run.keep_last": (at_least(0), "an integer >= 0 (0 = keep every checkpoint)"),
    "run.val_every": (at_least(0), "an integer >= 0 (0 = no validation)"),
    "run.val_batches": (at_least(1), "an integer >= 1"),
    "run.max_nonfinite": (at_least(0), "an integer >= 0"),
    "run.world_size": (optional(at_least(1)), "an integer >= 1, or null"),
    "run.peak_tflops": (optional(positive), "a finite number > 0, or null"),
    "finetune.head_warmup_steps": (at_least(0), "an integer >= 0"),
    "finetune.tower_warmup_steps": (at_least(0), "an integer >= 0"),
    "finetune.retention_weight": (non_negative, "a finite number >= 0"),
    "finetune.lora_rank": (at_least(0), "an integer >= 0 (0 = full fine-tuning)"),
    "finetune.lora_alpha": (positive, "a finite number > 0"),
}

# Pairs and lists: key → (check, range)
_PAIRS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "optim.betas": (below_one, "two numbers in [0, 1)"),
    "data.views.global_scale": (lambda v: _finite(v) and 0 < v <= 1, "two numbers in (0, 1], low <= high"),
    "data.views.local_scale": (lambda v: _finite(v) and 0 < v <= 1, "two numbers in (0, 1], low <= high"),
    "data.views.ratio": (positive, "two numbers > 0, low <= high"),
    "data.views.jitter_strength": (non_negative, "four finite numbers >= 0"),
    "data.mask.block_aspect": (positive, "two numbers > 0, low <= high"),
}


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_ranges(cfg: Any) -> None:
    """Raise ValueError naming the first field of ``cfg`` (a TrainConfig) outside its range."""
    for key, (ok, accepted) in RANGES.items():
        value = _get(cfg, key)
        if not ok(value):
            raise ValueError(f"{key}={value!r}: expected {accepted}")
    for key, (ok, accepted) in _PAIRS.items():
        values = list(_get(cfg, key))
        ordered = len(values) != 2 or key == "optim.betas" or values[0] <= values[1]
        if not all(ok(v) for v in values) or not ordered:
            raise ValueError(f"{key}={values!r}: expected {accepted}")
    weights = cfg.data.weights
    if weights is not None and not all(positive(w) for w in weights):
        raise ValueError(f"data.weights={list(weights)!r}: expected one finite number > 0 per source")
    if not all(isinstance(d, int) and d >= 1 for d in cfg.loss.matryoshka_dims):
        raise ValueError(f"loss.matryoshka_dims={list(cfg.loss.matryoshka_dims)!r}: expected integers >= 1")
    mw = cfg.loss.matryoshka_weights
    if mw is not None and not all(non_negative(w) for w in mw):
        raise ValueError(f"loss.matryoshka_weights={list(mw)!r}: expected finite numbers >= 0")


def check_crop_sizes(cfg: Any, patch_size: int | None) -> None:
    """Crops of at least one patch (a smaller one has no token and fails inside a data worker)."""
    v = cfg.data.views
    sizes = {"data.views.global_size": v.global_size}
    if v.num_local > 0:
        sizes["data.views.local_size"] = v.local_size
    for key, size in sizes.items():
        floor = patch_size or 1
        if not isinstance(size, int) or size < floor:
            where = f"the patch size {patch_size}" if patch_size else "1"
            raise ValueError(f"{key}={size!r}: expected an integer >= {where}")


def check_mixed_precision(mixed_precision: str, cuda: bool) -> None:
    """fp16 autocast exists only on CUDA here; elsewhere accelerate silently trains in fp32."""
    if mixed_precision == "fp16" and not cuda:
        raise ValueError("run.mixed_precision=fp16: expected a CUDA device (fp16 on the CPU would silently train "
                         "in fp32); use run.mixed_precision=bf16 or no")


def check_output_dir(output_dir: str) -> None:
    """Every name short enough for the file system, the whole path short enough for what a run writes inside,
    and the folder (or the nearest existing folder above it) writable."""
    path = Path(output_dir)
    key = "run.output_dir"
    if not output_dir:
        raise ValueError(f"{key} is empty: expected a folder path")
    try:
        name_max = os.pathconf(".", "PC_NAME_MAX")
        path_max = os.pathconf(".", "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise ValueError(f"{key}: the name {part[:40]}… has {len(os.fsencode(part))} bytes, expected at most "
                             f"{name_max} (the file system's limit)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    total = len(os.fsencode(str(path.absolute()))) + _LONGEST_INSIDE
    if total > path_max:
        raise ValueError(f"{key}: {len(os.fsencode(str(path.absolute())))} bytes, expected at most "
                         f"{path_max - _LONGEST_INSIDE} (the files a run writes inside must fit {path_max})")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{key}={output_dir}: exists and is not a folder")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{key}={output_dir}: {existing} is not writable ({os.strerror(errno.EACCES)})")
