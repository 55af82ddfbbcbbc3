"""The TIPS pretraining loop on accelerate: one ``train_step`` per optimiser step, then log, validate, save.

A step is ``train_step`` (accumulate micro-batches, backward, clip, step, zero_grad) followed by ``after_step``
(logit-scale clamp, teacher update, counters). Losses stay device tensors until a logging step; the only host
sync of a step is the all-rank decision to skip it when a loss is not finite.
"""

from __future__ import annotations

import errno
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..data import Batch, TrainLoader, build_train_loader
from ..formats.loading import load
from ..formats.pretrained import save_pretrained
from ..models.tips import TIPS
from . import checkpointing as ckpt
from . import parallel
from .checkpointer import Checkpointer, DiskFullError, micro_batch_seed, resumed_position
from .flops import peak_tflops, step_flops
from .builders import TrainModule, build_modules, data_config, default_epoch_size, peak_lr
from .config import TrainConfig, save_config
from .finite import NonFiniteWeightsError, nonfinite_everywhere, stop_message
from .optim import build_optimizer, param_groups, set_lr_wd
from .plan import TrainPlan, make_plan
from .run_lock import RunLock
from .schedules import cosine, ema_momentum, fraction_to_steps, linear_warmup, warmup_cosine
from .student import with_patch_selection
from .validation import validate
from .lora import merge_lora, save_adapters
from .warmup import tower_lr_factor

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
    tower_lr_factor: float = 1.0  # 0 during a fine-tune's head warm-up (tips.train.warmup)


@dataclass
class StepResult:
    """What one optimiser step produced: the last micro-batch's loss terms and pre-clip gradient norms as device
    tensors (convert them only when logging), whether the step was skipped, and this rank's sample count."""

    losses: dict[str, torch.Tensor]
    grad_norms: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: bool = False
    samples: int = 0


class Trainer:
    """One pretraining run. ``Trainer(cfg).fit()`` trains ``cfg.run.steps`` optimiser steps and returns the
    folder of the final ``save_pretrained`` export. It composes a :class:`~tips.train.parallel.Parallel` strategy
    (how the module runs on this launch), a :class:`~tips.train.checkpointer.Checkpointer` (one format for every
    strategy) and the folder's :class:`~tips.train.run_lock.RunLock`."""

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
        self.parallel = parallel.build_parallel(acc, r.parallel, r.mixed_precision, r.reshard_after_forward)
        set_seed(r.seed)  # same initial weights on every rank (DDP also broadcasts them)
        self.output_dir = Path(r.output_dir)
        self.checkpointer = Checkpointer(self.output_dir, acc, r.keep_last)
        self.lock = RunLock(self.output_dir) if acc.is_main_process else None
        frozen = load(cfg.teacher.checkpoint) if self.plan.teacher.startswith("frozen") else None
        self.module: TrainModule
        self.module, self.teacher = build_modules(cfg, self.plan, frozen)
        model = self.module.student.model
        if r.compile:  # before sharding: the compiled call sits inside FSDP's hooks
            compile_blocks(self.module.student, r.compile_backend)

        def make_optimizer(module: torch.nn.Module) -> torch.optim.Optimizer:
            o = cfg.optim
            text_decay = o.layerwise_decay if o.text_layerwise_decay is None else o.text_layerwise_decay
            groups = param_groups(module, o.layerwise_decay, "student.model.vision.", model.cfg.vision.depth,
                                  text_decay, "student.model.text.", model.cfg.text.depth, "student.model.")
            return build_optimizer(groups, cfg.optim.optimizer, tuple(cfg.optim.betas), cfg.optim.eps)

        self.module, self.optimizer = self.parallel.prepare(self.module, self.teacher, self.plan.teacher,
                                                            make_optimizer)
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
            tower_lr_factor=tower_lr_factor(step, self.cfg.finetune.head_warmup_steps,
                                            self.cfg.finetune.tower_warmup_steps),
        )  # fmt: skip

    # ------------------------------------------------------------------ one step
    def train_step(self, batches: Iterator[Batch], schedule: Schedule, with_stats: bool = False) -> StepResult:
        """One optimiser step over ``run.grad_accum`` micro-batches; a non-finite loss on any rank in any
        micro-batch skips the whole step (no weight moves). ``with_stats``: teacher statistics (logging steps)."""
        acc, accum = self.accelerator, self.cfg.run.grad_accum
        set_lr_wd(self.optimizer, schedule.lr, schedule.wd, schedule.freeze_last_layer, schedule.tower_lr_factor)
        finite = torch.ones((), dtype=torch.bool, device=acc.device)
        for micro in range(accum):
            batch = self._next_batch(batches)
            # stochastic depth and dropout draw from the global generator: a function of the step, not of history
            torch.manual_seed(micro_batch_seed(self.cfg.run.seed, self.step, micro, acc.process_index))
            with self.parallel.micro_batch(self.module, last=micro == accum - 1):
                losses = self.module(batch, self.teacher, schedule.teacher_temp, with_stats and micro == accum - 1)
                finite &= torch.isfinite(losses["loss"].detach())
                acc.backward(losses["loss"])
        self.parallel.finish_gradients()
        skipped = not self._all_ranks(finite)  # the step's one host sync
        grad_norms = {} if skipped else self._clip()
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(losses, grad_norms, skipped, len(batch) * accum)

    def after_step(self, result: StepResult, schedule: Schedule) -> None:
        """Clamp the temperatures and move the teacher after a taken step; count skipped ones. A skipped step
        whose weights are already non-finite (a NaN update by the step before) stops the run: skipping cannot
        undo it."""
        if result.skipped:
            self.ensure_finite("a non-finite loss")
            self.nonfinite_total += 1
            self.consecutive_nonfinite += 1
            if self.consecutive_nonfinite > self.cfg.run.max_nonfinite:
                raise NonFiniteLossError(
                    f"{self.consecutive_nonfinite} consecutive steps had a non-finite loss (last at step {self.step}); "
                    "lower optim.lr, check the data, or use run.mixed_precision=bf16 instead of fp16; last good "
                    f"checkpoint: {ckpt.latest_checkpoint(self.output_dir) or 'none'}"
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
                norms[name] = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_grad or math.inf)
        return norms

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        try:
            batches = self.start()
            self._train(batches)
            return self.finish()
        finally:
            self.close()

    def _train(self, batches: Iterator[Batch]) -> None:
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

    def start(self) -> Iterator[Batch]:
        """Claim the output folder, write the config, resume, build the training loader and the trackers; returns
        the batch stream."""
        cfg, acc = self.cfg, self.accelerator
        self._on_main(self._claim_folder)
        resume_from = self.checkpointer.resume_path(cfg.run.resume)
        start_batch = self.resume(resume_from) if resume_from is not None else 0
        epoch_size = default_epoch_size(cfg) if (cfg.data.resampled or acc.num_processes > 1) else cfg.data.epoch_size
        dcfg = data_config(cfg, cfg.data.train, self.model.patch_size, epoch_size=epoch_size)
        self.loader = build_train_loader(dcfg, self.model.tokenizer, acc.process_index, acc.num_processes,
                                         start_batch=start_batch)
        acc.init_trackers("tips")
        return self.loader.forever()

    def _claim_folder(self) -> None:
        """Main process: take the folder's lock, refuse to start afresh over an earlier run's checkpoints unless
        ``run.force`` (which clears the folder), remove what interrupted saves left, write the config."""
        r = self.cfg.run
        self.lock.acquire()
        earlier = [p for p in (ckpt.checkpoint_root(self.output_dir), self.output_dir / "final") if p.exists()]
        if earlier and not r.resume:
            if not r.force:
                raise FileExistsError(
                    f"{self.output_dir} holds an earlier run ({', '.join(p.name for p in earlier)}): continue it with "
                    "run.resume=latest, or start over with --force (run.force=true), which deletes its contents"
                )
            for entry in self.output_dir.iterdir():
                if entry != self.lock.path:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            log.warning("run.force: removed the earlier run in %s", self.output_dir)
        for stale in ckpt.remove_temporaries(self.output_dir):  # no live writer: we hold the lock
            log.warning("removed %s, left by a save that was interrupted", stale)
        save_config(self.cfg, self.output_dir / "config.yaml")

    def _on_main(self, fn) -> None:
        """Run ``fn`` on the main process; its error (one line) is raised on every rank, not only there."""
        acc = self.accelerator
        error = [None]
        if acc.is_main_process:
            try:
                fn()
            except Exception as e:
                error = [f"{type(e).__name__}: {e}"]
                if acc.num_processes == 1:
                    raise
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(error)
        if error[0] is not None:
            raise RuntimeError(error[0])

    def close(self) -> None:
        """Release the folder's lock (the end of :meth:`fit`, or of a run stopped by an error)."""
        if self.lock is not None:
            self.lock.release()

    # ------------------------------------------------------------------ checkpoints and exports
    def save(self) -> Path:
        """A resumable checkpoint of this step (every rank calls; :class:`Checkpointer`); never of non-finite
        weights (:meth:`ensure_finite`)."""
        acc = self.accelerator
        self.ensure_finite("before saving a checkpoint")
        # the loader's own position (batches this rank consumed) is what it resumes from
        positions = acc.gather(torch.tensor([self.loader.state_dict()["batches_seen"]], device=acc.device)).tolist()
        state = {"step": self.step, "data_positions": positions, "skips": self.skips(),
                 "nonfinite_total": self.nonfinite_total, "world_size": acc.num_processes,
                 "batch_size": self.cfg.run.batch_size, "seed": self.cfg.run.seed, "parallel": self.parallel.name}
        export_teacher = self.cfg.run.export_teacher
        return self.checkpointer.save(
            self.step, self.core, self.optimizer.optimizer, self.teacher, state,
            lambda folder: self.export(folder / "export", folder / "export_teacher" if export_teacher else None))

    def ensure_finite(self, when: str) -> None:
        """Raise :class:`NonFiniteWeightsError` on every rank when any rank's student, objective or teacher holds
        a non-finite tensor: the message names the step, the tensors and the last good checkpoint, which stays
        (pruning happens only after a newer checkpoint is complete, and none is written from these weights)."""
        tensors = list(self.core.state_dict().items())
        if self.teacher is not None:
            tensors += [(f"teacher.{k}", v) for k, v in self.teacher.state_dict().items()]
        ranks, bad = nonfinite_everywhere(tensors, self.accelerator)
        if ranks:
            raise NonFiniteWeightsError(stop_message(self.step, bad, ckpt.latest_checkpoint(self.output_dir), when))

    def resume(self, path: Path) -> int:
        """Restore model, optimiser, teacher and counters from ``path``; returns this rank's data position."""
        acc = self.accelerator
        state = self.checkpointer.load(path, self.core, self.optimizer.optimizer, self.teacher)
        if state.get("seed") != self.cfg.run.seed:
            raise ValueError(f"{path} was written with run.seed={state.get('seed')}, this run has "
                             f"run.seed={self.cfg.run.seed}: resume with the same seed")
        if state["world_size"] != acc.num_processes and acc.is_main_process:
            log.warning("%s was written by %d processes, this launch has %d: weights, optimiser and teacher are "
                        "restored exactly, the data stream continues from the same number of samples",
                        path, state["world_size"], acc.num_processes)
        self.step = state["step"]
        self.skips_before_resume = dict(state.get("skips", {}))
        self.nonfinite_total = state.get("nonfinite_total", 0)
        self.resumed_from = path
        if acc.is_main_process:
            log.info("resumed from step %d (%s)", self.step, path)
        return resumed_position(state["data_positions"], state.get("batch_size", self.cfg.run.batch_size),
                                self.cfg.run.batch_size, acc.num_processes, acc.process_index)

    def export(self, student_dir: Path, teacher_dir: Path | None = None) -> None:
        """``save_pretrained`` of the student towers (with heads as extra tensors), optionally the teacher's
        image tower in the student's text tower's company so it loads as a full model. Call on every rank (the
        strategy may gather the weights first); the main process writes."""
        export_teacher = teacher_dir is not None and self.teacher is not None and self.plan.teacher == "ema"
        student_sd = self.parallel.full_state_dict(self.core)
        teacher_sd = self.parallel.full_state_dict(self.teacher) if export_teacher else None
        if student_sd is None:
            return
        lora = self.cfg.finetune
        tower_sd = {k[len("student.model."):]: v for k, v in student_sd.items() if k.startswith("student.model.")}
        adapters = None
        if lora.lora_rank > 0:  # exports hold merged weights; the adapters alone go beside them
            tower_sd, adapters = merge_lora(tower_sd, lora.lora_rank, lora.lora_alpha)
            if teacher_sd is not None:
                teacher_sd, _ = merge_lora(teacher_sd, lora.lora_rank, lora.lora_alpha)
        model = self._plain_model(tower_sd)
        heads = {}
        for name in ("dino_head", "ibot_head"):
            prefix = f"student.{name}."
            heads.update({f"heads.{name}.{k[len(prefix):]}": v for k, v in student_sd.items() if k.startswith(prefix)})
        save_pretrained(model, student_dir, heads)
        if adapters is not None:
            save_adapters(adapters, student_dir, lora.lora_rank, lora.lora_alpha, lora.lora_targets)
        if export_teacher:
            teacher_model = self._plain_model(model.state_dict())
            teacher_model.vision.load_state_dict({k[len("vision."):]: v for k, v in teacher_sd.items()
                                                  if k.startswith("vision.")})
            save_pretrained(teacher_model, teacher_dir)

    def _plain_model(self, state: dict[str, torch.Tensor]) -> TIPS:
        """A plain TIPS holding ``state`` (the trained model's config, tokenizer and temperature flags)."""
        model = TIPS(self.model.cfg, tokenizer=self.model.tokenizer)
        model.load_state_dict(state)
        model.has_temperature = dict(self.model.has_temperature)
        return model

    def finish(self) -> Path:
        """Check the replicas, write ``final/`` (and ``final_teacher/``), close the trackers. A failed write
        removes its temporary folders; a full disk is reported as one."""
        acc = self.accelerator
        self.parallel.check_replicas(self.core)
        self.ensure_finite("before writing final/")
        final = self.output_dir / "final"
        before = set(self.output_dir.glob(".final*.tmp-*"))
        try:
            self.export(final, self.output_dir / "final_teacher" if self.cfg.run.export_teacher else None)
        except OSError as e:
            for tmp in set(self.output_dir.glob(".final*.tmp-*")) - before:
                shutil.rmtree(tmp, ignore_errors=True)
            if e.errno == errno.ENOSPC:
                raise DiskFullError(errno.ENOSPC, f"disk full: no space left on the device of {final} while "
                                    "writing the final export; free space there and write it again from the last "
                                    "checkpoint (run.resume=latest)") from e
            raise
        acc.wait_for_everyone()
        acc.end_training()
        return final

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
            "teacher_temp": schedule.teacher_temp, "tower_lr": schedule.lr * schedule.tower_lr_factor,
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
        metrics = self.parallel.on_full_model(
            self.module, lambda: validate(self.model, self.validation_batches(), acc.device, acc.autocast))
        if metrics is not None:
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
