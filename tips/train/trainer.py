"""The TIPS pretraining loop on accelerate: one ``train_step`` per optimiser step, then log, validate, save.

A step is ``train_step`` (accumulate micro-batches, backward, clip, step, zero_grad) followed by ``after_step``
(logit-scale clamp, teacher update, counters). Losses stay device tensors until a logging step; the only host
sync of a step is the all-rank decision to skip it when a loss is not finite.
"""

from __future__ import annotations

import logging
import contextlib
import math
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import DistributedType
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..data import Batch, TrainLoader, build_train_loader
from ..formats.loading import load
from ..models.tips import TIPS
from . import checkpointing as ckpt
from . import parallel
from .flops import peak_tflops, step_flops
from .builders import TrainModule, build_modules, data_config, default_epoch_size, peak_lr
from .config import TrainConfig, save_config
from .optim import build_optimizer, param_groups, set_lr_wd
from .plan import TrainPlan, make_plan
from .run_state import RunState
from .schedules import cosine, ema_momentum, fraction_to_steps, linear_warmup, warmup_cosine
from .student import with_patch_selection
from .validation import validate

log = logging.getLogger("tips.train")
CLIPPED = ("model.vision", "model.text", "dino_head", "ibot_head", "pixel_decoder", "feature_proj")


class NonFiniteLossError(RuntimeError):
    pass


@dataclass(frozen=True)
class Schedule:
    """The step's hyper-parameters: pure functions of the global step (a resumed run recomputes them)."""

    lr: float
    wd: float
    momentum: float
    teacher_temp: float
    freeze_last_layer: bool


@dataclass
class StepResult:
    """What one optimiser step produced: the last micro-batch's loss terms and pre-clip gradient norms as device
    tensors (convert them only when logging), whether the step was skipped, and this rank's sample count."""

    losses: dict[str, torch.Tensor]
    grad_norms: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: bool = False
    samples: int = 0


class Trainer(RunState):
    """One pretraining run. ``Trainer(cfg).fit()`` trains ``cfg.run.steps`` optimiser steps and returns the
    folder of the final ``save_pretrained`` export. Checkpoints, resume and exports: :class:`RunState`."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, r = cfg, cfg.run
        self.plan: TrainPlan = make_plan(cfg)
        # Ablations switch terms off; DDP must then tolerate parameters without gradients (e.g. CLS2).
        find_unused = self.plan.has_unused_parameters or bool(cfg.model.freeze)
        self.accelerator = acc = Accelerator(
            mixed_precision=r.mixed_precision, gradient_accumulation_steps=r.grad_accum, log_with="tensorboard",
            project_dir=r.output_dir, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
        )  # fmt: skip
        if r.world_size is not None and acc.num_processes != r.world_size:
            raise RuntimeError(
                f"run.world_size={r.world_size} but the launch started {acc.num_processes} process(es); check the "
                "accelerate config / --num_processes (with CPU: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu ...)"
            )
        # fsdp: our own FSDP2 on the process group accelerate (or torchrun) set up; accelerate wraps nothing.
        self.sharded = r.parallel == "fsdp"
        if self.sharded:
            if acc.distributed_type not in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
                raise RuntimeError(
                    f"run.parallel=fsdp shards the model itself, but accelerate was launched as {acc.distributed_type}: "
                    "launch with a plain multi-GPU config (configs/accelerate/fsdp_multinode.yaml) or torchrun"
                )
            parallel.ensure_process_group(acc.device)
        set_seed(r.seed)  # same initial weights on every rank (DDP also broadcasts them)
        self.output_dir = Path(r.output_dir)
        frozen = load(cfg.teacher.checkpoint) if self.plan.teacher.startswith("frozen") else None
        self.module: TrainModule
        self.module, self.teacher = build_modules(cfg, self.plan, frozen)
        model = self.module.student.model
        if self.teacher is not None:
            self.teacher.to(acc.device)
        if r.compile:
            compile_blocks(self.module.student, r.compile_backend)
        if self.sharded:  # before the optimiser: sharding replaces the parameters by DTensors
            self.module.to(acc.device)
            self.replicated = parallel.replicated_parameters(self.module)
            parallel.shard_student(self.module, acc.device, r.mixed_precision, r.reshard_after_forward)
            if self.teacher is not None:
                parallel.shard_teacher(self.teacher, self.plan.teacher, acc.device, r.mixed_precision)
        groups = param_groups(self.module, cfg.optim.layerwise_decay, "student.model.vision.", model.cfg.vision.depth)
        optimizer = build_optimizer(groups, cfg.optim.optimizer, tuple(cfg.optim.betas), cfg.optim.eps)
        if self.sharded:
            self.optimizer = acc.prepare(optimizer)
        else:
            self.module, self.optimizer = acc.prepare(self.module, optimizer)
        self.peak_lr = peak_lr(cfg, acc.num_processes)
        self.step = self.nonfinite_total = self.consecutive_nonfinite = 0
        self.skips_before_resume: dict[str, int] = {}
        self.resumed_from: Path | None = None
        self.loader: TrainLoader | None = None
        self._val_batches: list[Batch] | None = None
        self._window = {"data": 0.0, "total": 0.0, "samples": 0}
        self._text_len = model.cfg.text.max_len  # the last batch's caption length (FLOPs per sample)
        self.peak_tflops = r.peak_tflops or (
            peak_tflops(torch.cuda.get_device_name(acc.device)) if acc.device.type == "cuda" else None)

    def flops_per_sample(self) -> float:
        """Model FLOPs of one sample of a training step (:mod:`tips.train.flops`), at the last caption length."""
        frozen = self.teacher.vision.cfg if self.plan.teacher.startswith("frozen") else None
        return step_flops(self.cfg, self.plan, self.model.cfg.vision, self.model.cfg.text, self._text_len,
                          global_batch=self.cfg.run.batch_size * self.accelerator.num_processes,
                          teacher_vision=frozen).per_sample

    @property
    def core(self) -> TrainModule:
        return self.accelerator.unwrap_model(self.module)

    @property
    def model(self) -> TIPS:
        return self.core.student.model

    def schedule(self, step: int) -> Schedule:
        """LR, WD, EMA momentum, teacher temperature and the prototype-layer freeze at ``step``."""
        o, l, total = self.cfg.optim, self.cfg.loss, self.cfg.run.steps
        return Schedule(
            lr=warmup_cosine(step, total, self.peak_lr, o.min_lr, fraction_to_steps(o.warmup_frac, total)),
            wd=cosine(step, total, o.weight_decay, o.weight_decay_end),
            momentum=ema_momentum(step, total, self.cfg.teacher.momentum, self.cfg.teacher.momentum_final),
            teacher_temp=linear_warmup(step, fraction_to_steps(l.teacher_temp_warmup_frac, total),
                                       l.teacher_temp_warmup, l.teacher_temp),
            freeze_last_layer=step < fraction_to_steps(o.freeze_last_layer_frac, total),
        )  # fmt: skip

    # ------------------------------------------------------------------ one step
    def train_step(self, batches: Iterator[Batch], schedule: Schedule, with_stats: bool = False) -> StepResult:
        """One optimiser step over ``run.grad_accum`` micro-batches; a non-finite loss on any rank in any
        micro-batch skips the whole step (no weight moves). ``with_stats``: teacher statistics (logging steps)."""
        acc, accum = self.accelerator, self.cfg.run.grad_accum
        set_lr_wd(self.optimizer, schedule.lr, schedule.wd, schedule.freeze_last_layer)
        finite = torch.ones((), dtype=torch.bool, device=acc.device)
        for micro in range(accum):
            batch = self._next_batch(batches)
            if self.sharded:  # accelerate's no_sync does not know FSDP2: reduce-scatter on the last micro-batch only
                self.module.set_requires_gradient_sync(micro == accum - 1)
            with acc.accumulate(self.module), self._autocast():
                losses = self.module(batch, self.teacher, schedule.teacher_temp, with_stats and micro == accum - 1)
                finite &= torch.isfinite(losses["loss"].detach())
                acc.backward(losses["loss"])
        if self.sharded:  # the scalars FSDP leaves whole (temperatures) are synced by hand
            parallel.average_gradients(self.replicated)
        skipped = not self._all_ranks(finite)  # the step's one host sync
        grad_norms = {} if skipped else self._clip()
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(losses, grad_norms, skipped, len(batch) * accum)

    def after_step(self, result: StepResult, schedule: Schedule) -> None:
        """Clamp the temperatures and move the teacher after a taken step; count skipped ones."""
        if result.skipped:
            self.nonfinite_total += 1
            self.consecutive_nonfinite += 1
            if self.consecutive_nonfinite > self.cfg.run.max_nonfinite:
                raise NonFiniteLossError(
                    f"{self.consecutive_nonfinite} consecutive steps had a non-finite loss (last at step {self.step}); "
                    "lower optim.lr, check the data, or use run.mixed_precision=bf16 instead of fp16"
                )
        else:
            self.consecutive_nonfinite = 0
            cap = math.log(self.cfg.loss.logit_scale_max)
            with torch.no_grad():
                for p in (self.model.logit_scale_alt, self.model.logit_scale_syn):
                    p.clamp_(0.0, cap)
            if self.teacher is not None:
                self.teacher.update(self.core.student, schedule.momentum)
        self.step += 1

    def _autocast(self):
        """DDP's forward is autocast by ``accelerate.prepare``; the unprepared FSDP module gets the same here."""
        return self.accelerator.autocast() if self.sharded else contextlib.nullcontext()

    def _next_batch(self, batches: Iterator[Batch]) -> Batch:
        t0 = time.perf_counter()
        batch = with_patch_selection(next(batches), self.plan)  # on the host: T is data-dependent
        batch = batch.for_model(self.accelerator.device, non_blocking=True)  # uint8 crops become float there
        self._text_len = batch.alt_ids.shape[1]
        self._window["data"] += time.perf_counter() - t0
        return batch

    def _all_ranks(self, flag: torch.Tensor) -> bool:
        """True when ``flag`` (a device bool) holds on every rank: one all-reduce, one host read."""
        count = flag.to(torch.float32).reshape(1)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        return count.item() == self.accelerator.num_processes

    def _clip(self) -> dict[str, torch.Tensor]:
        """Clip each student sub-module separately (DINOv2 practice); returns pre-clip norms (device tensors).
        Under FSDP the gradients are DTensor shards and ``clip_grad_norm_`` reduces their norms across ranks."""
        self.accelerator.unscale_gradients()  # fp16: clip the true gradients (a no-op otherwise)
        norms = {}
        student = self.core.student
        for name in CLIPPED:
            module = _submodule(student, name)
            params = [p for p in module.parameters() if p.grad is not None] if module is not None else []
            if params:
                norms[name] = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_grad)
        return norms

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        batches = self.start()
        progress = tqdm(total=self.cfg.run.steps, initial=self.step, disable=not self.accelerator.is_local_main_process,
                        desc="pretraining", dynamic_ncols=True)
        self.module.train()
        while self.step < self.cfg.run.steps:
            t0 = time.perf_counter()
            schedule = self.schedule(self.step)
            result = self.train_step(batches, schedule, with_stats=self._log_due(self.step + 1))
            self.after_step(result, schedule)
            self._window["total"] += time.perf_counter() - t0
            self._window["samples"] += result.samples * self.accelerator.num_processes
            progress.update(1)
            self.maybe_log(result, schedule, progress)
            self.maybe_validate()
            self.maybe_save()
        progress.close()
        return self.finish()

    def start(self) -> Iterator[Batch]:
        """Output folder, config, resume, the training loader and the trackers; returns the batch stream."""
        cfg, acc = self.cfg, self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            save_config(cfg, self.output_dir / "config.yaml")
            for stale in ckpt.remove_stale_temporaries(self.output_dir):
                log.warning("removed %s, left by a save that was interrupted", stale)
        acc.wait_for_everyone()
        resume_from = ckpt.resolve_resume(cfg.run.resume, self.output_dir)
        start_batch = self.resume(resume_from) if resume_from is not None else 0
        epoch_size = default_epoch_size(cfg) if (cfg.data.resampled or acc.num_processes > 1) else cfg.data.epoch_size
        dcfg = data_config(cfg, cfg.data.train, self.model.patch_size, epoch_size=epoch_size)
        self.loader = build_train_loader(dcfg, self.model.tokenizer, acc.process_index, acc.num_processes,
                                         start_batch=start_batch)
        acc.init_trackers("tips")
        return self.loader.forever()

    def _log_due(self, step: int) -> bool:
        return step % self.cfg.run.log_every == 0 or step == self.cfg.run.steps

    def skips(self) -> dict[str, int]:
        """Skipped samples by reason over the whole run (before and after a resume)."""
        now = self.loader.skips.as_dict() if self.loader is not None else {}
        return {k: int(self.skips_before_resume.get(k, 0)) + int(now.get(k, 0))
                for k in set(self.skips_before_resume) | set(now)}

    def maybe_log(self, result: StepResult, schedule: Schedule, progress: tqdm | None = None) -> None:
        """On logging steps only: loss terms, norms, schedules, temperatures, throughput (host conversions here)."""
        if not self._log_due(self.step):
            return
        w = self._window
        logged = {("loss/" + k if "/" not in k else k): float(v.detach()) for k, v in result.losses.items()}
        logged.update({f"grad_norm/{k}": float(parallel.full_value(v)) for k, v in result.grad_norms.items()})
        logged.update({
            "lr": schedule.lr, "wd": schedule.wd, "teacher_momentum": schedule.momentum,
            "teacher_temp": schedule.teacher_temp,
            "temperature/alt": math.exp(-parallel.full_value(self.model.logit_scale_alt).item()),
            "temperature/syn": math.exp(-parallel.full_value(self.model.logit_scale_syn).item()),
            "samples_per_s": w["samples"] / max(w["total"], 1e-9),
            "data_wait_fraction": w["data"] / max(w["total"], 1e-9),
            "nonfinite_steps": self.nonfinite_total, **{f"skipped/{k}": v for k, v in self.skips().items()},
        })  # fmt: skip
        logged.update(self.perf(logged["samples_per_s"]))
        self.accelerator.log(logged, step=self.step)
        if progress is not None:
            progress.set_postfix(loss=f"{logged['loss/loss']:.3f}", refresh=False)
        self._window = {"data": 0.0, "total": 0.0, "samples": 0}

    def perf(self, samples_per_s: float) -> dict[str, float]:
        """perf/samples_per_s (all ranks), perf/tflops_per_gpu and, with a known peak, perf/mfu."""
        per_gpu = samples_per_s / self.accelerator.num_processes
        tflops = per_gpu * self.flops_per_sample() / 1e12
        out = {"perf/samples_per_s": samples_per_s, "perf/tflops_per_gpu": tflops}
        if self.peak_tflops:
            out["perf/mfu"] = tflops / self.peak_tflops
        return out

    def maybe_validate(self) -> None:
        """Every ``run.val_every`` steps on the first ``run.val_batches`` held-out batches (read once)."""
        cfg, acc = self.cfg, self.accelerator
        if not (cfg.run.val_every and cfg.data.val and self.step % cfg.run.val_every == 0):
            return
        if self.sharded:  # every rank takes part in the all-gathers; the root's own weights are gathered by hand
            self.module.unshard()
            metrics = validate(self.model, self.validation_batches(), acc.device, acc.autocast)
            self.module.reshard()
            acc.log(metrics, step=self.step)
        elif acc.is_main_process:
            metrics = validate(self.model, self.validation_batches(), acc.device, acc.autocast)
            acc.log(metrics, step=self.step)
        acc.wait_for_everyone()

    def validation_batches(self) -> list[Batch]:
        """The held-out batches, decoded on first use and kept on the host (a few batches)."""
        if self._val_batches is None:
            cfg = self.cfg
            dcfg = data_config(cfg, [cfg.data.val], self.model.patch_size, resampled=False, epoch_size=None,
                               num_workers=0)
            loader = build_train_loader(dcfg, self.model.tokenizer, 0, 1)
            self._val_batches = list(islice(iter(loader), cfg.run.val_batches))
        return self._val_batches

    def maybe_save(self) -> None:
        if self.step % self.cfg.run.save_every == 0 or self.step == self.cfg.run.steps:
            self.save()


def compile_blocks(student: torch.nn.Module, backend: str = "inductor") -> None:
    """``torch.compile`` each transformer block of both towers and each head, in place (names unchanged).

    Per-block compilation (as torchtitan does) keeps graphs small, composes with per-block FSDP and
    checkpointing, and leaves the data-dependent glue (patch selection, caption routing) eager.
    """
    model = student.model
    for block in list(model.vision.blocks) + list(model.text.transformer.resblocks):
        block.compile(backend=backend)
    for name in ("dino_head", "ibot_head", "pixel_decoder"):
        head = getattr(student, name, None)
        if head is not None:
            head.compile(backend=backend)


def _submodule(module: torch.nn.Module, name: str) -> torch.nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None
