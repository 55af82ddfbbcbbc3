"""The TIPS pretraining loop on accelerate: prepare, step, update the teacher, log, checkpoint, resume."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..atomic import write_json_atomic
from ..checkpoints import save_pretrained
from ..loading import load
from ..models.tips import TIPS
from . import checkpointing as ckpt
from .builders import (
    TrainModule, build_model, build_teacher, build_train_module, data_config, default_epoch_size, peak_lr,
    teacher_trainable_state,
)  # fmt: skip
from .config import TrainConfig, save_config
from .optim import build_optimizer, param_groups, set_lr_wd
from .schedules import cosine, ema_momentum, fraction_to_steps, linear_warmup, warmup_cosine
from .teacher import ema_update
from .validation import validate

log = logging.getLogger("tips.train")
LOSS_TERMS = ("contrastive_alt", "contrastive_syn", "distill", "mask")


class NonFiniteLossError(RuntimeError):
    pass


class Trainer:
    """One pretraining run. ``Trainer(cfg).fit()`` trains ``cfg.run.steps`` optimiser steps and returns the
    folder of the final ``save_pretrained`` export."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        r = cfg.run
        w = cfg.loss.weights
        # Ablations switch terms off; DDP must then tolerate parameters without gradients (e.g. CLS2).
        find_unused = min(w.contrastive_alt, w.contrastive_syn, w.distill, w.mask) == 0 or bool(cfg.model.freeze)
        self.accelerator = Accelerator(
            mixed_precision=r.mixed_precision,
            gradient_accumulation_steps=r.grad_accum,
            log_with="tensorboard",
            project_dir=r.output_dir,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
        )
        acc = self.accelerator
        if r.world_size is not None and acc.num_processes != r.world_size:
            raise RuntimeError(
                f"run.world_size={r.world_size} but the launch started {acc.num_processes} process(es); check the "
                "accelerate config / --num_processes (with CPU: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu ...)"
            )
        set_seed(r.seed)  # same initial weights on every rank (DDP also broadcasts them)
        self.output_dir = Path(r.output_dir)
        frozen = load(cfg.teacher.checkpoint) if cfg.teacher.mode == "frozen" else None
        model = build_model(cfg)
        self.module: TrainModule = build_train_module(cfg, model, frozen)
        self.teacher = build_teacher(cfg, self.module.student, frozen)
        if self.teacher is not None:
            self.teacher.to(acc.device)
        groups = param_groups(self.module, cfg.optim.layerwise_decay, "student.model.vision.", model.cfg.vision.depth)
        optimizer = build_optimizer(groups, cfg.optim.optimizer, tuple(cfg.optim.betas), cfg.optim.eps)
        if r.compile:
            self.module.student.compile()  # in place: parameter names (and checkpoints) stay the same
        self.module, self.optimizer = acc.prepare(self.module, optimizer)
        self.peak_lr = peak_lr(cfg, acc.num_processes)
        self.step = 0
        self.nonfinite_total = 0
        self.data_position = 0
        self.skips: dict[str, int] = {}
        self.resumed_from: Path | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def core(self) -> TrainModule:
        return self.accelerator.unwrap_model(self.module)

    @property
    def model(self) -> TIPS:
        return self.core.student.model

    def schedules(self, step: int) -> dict[str, float]:
        """LR, WD, EMA momentum and teacher temperature at ``step`` (pure functions of the step)."""
        o, total = self.cfg.optim, self.cfg.run.steps
        l = self.cfg.loss
        return {
            "lr": warmup_cosine(step, total, self.peak_lr, o.min_lr, fraction_to_steps(o.warmup_frac, total)),
            "wd": cosine(step, total, o.weight_decay, o.weight_decay_end),
            "momentum": ema_momentum(step, total, self.cfg.teacher.momentum, self.cfg.teacher.momentum_final),
            "teacher_temp": linear_warmup(
                step, fraction_to_steps(l.teacher_temp_warmup_frac, total), l.teacher_temp_warmup, l.teacher_temp
            ),
        }

    def _clip(self) -> dict[str, float]:
        """Clip each student sub-module separately (DINOv2 practice); returns pre-clip norms."""
        norms = {}
        student = self.core.student
        for name in ("model.vision", "model.text", "dino_head", "ibot_head", "pixel_decoder"):
            module = student.get_submodule(name) if _has_submodule(student, name) else None
            params = [p for p in module.parameters() if p.grad is not None] if module is not None else []
            if params:
                norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_grad)
                norms[name] = float(norm)
        return norms

    @torch.no_grad()
    def _clamp_logit_scales(self) -> None:
        cap = math.log(self.cfg.loss.logit_scale_max)
        for p in (self.model.logit_scale_alt, self.model.logit_scale_syn):
            p.clamp_(0.0, cap)

    def _update_teacher(self, momentum: float) -> None:
        if self.teacher is None or self.cfg.teacher.mode == "frozen":
            return
        student = self.core.student
        if self.cfg.teacher.mode == "ema":
            ema_update(self.teacher.vision, student.model.vision, momentum)
        for name in ("dino_head", "ibot_head"):
            t, s = getattr(self.teacher, name), getattr(student, name)
            if t is not None:
                ema_update(t, s, momentum)

    def _all_finite(self, loss: torch.Tensor) -> bool:
        flag = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=loss.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() == self.accelerator.num_processes)

    # ------------------------------------------------------------------ state
    def save(self) -> Path:
        """Write a complete checkpoint atomically, then prune old ones (main process writes shared files)."""
        acc = self.accelerator
        tmp = ckpt.temporary_dir(self.output_dir, self.step) if acc.is_main_process else None
        tmp_path = [str(tmp) if tmp else None]
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(tmp_path)
        tmp = Path(tmp_path[0])
        acc.save_state(str(tmp / "state"), safe_serialization=True)
        positions = acc.gather(torch.tensor([self.data_position], device=acc.device)).tolist()
        if acc.is_main_process:
            teacher_sd = teacher_trainable_state(self.teacher, self.cfg.teacher.mode)
            if teacher_sd:
                save_file(teacher_sd, str(tmp / "teacher.safetensors"))
            self.export(tmp / "export", tmp / "export_teacher" if self.cfg.run.export_teacher else None)
            write_json_atomic(tmp / "trainer.json", {
                "step": self.step, "data_positions": positions, "skips": self.skips,
                "nonfinite_total": self.nonfinite_total, "world_size": acc.num_processes,
            }, indent=2)  # fmt: skip
            ckpt.finalize(tmp, self.output_dir, self.step, self.cfg.run.keep_last)
        acc.wait_for_everyone()
        return ckpt.checkpoint_root(self.output_dir) / ckpt.step_dir_name(self.step)

    @torch.no_grad()
    def check_replicas(self) -> None:
        """All ranks must hold identical weights (DDP keeps them so); a divergence is a bug worth stopping for."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return
        params = [p.detach().double().flatten() for p in self.core.parameters()]
        signature = torch.stack([torch.cat(params).sum(), torch.cat(params).square().sum()]).to(acc.device)
        signatures = acc.gather(signature[None]).view(acc.num_processes, 2)
        spread = (signatures - signatures[0]).abs().max().item()
        if spread > 1e-6 * max(1.0, signatures.abs().max().item()):
            raise RuntimeError(f"ranks hold different weights after training (signature spread {spread:.3g})")
        if acc.is_main_process:
            log.info("all %d ranks hold identical weights (parameter signature %.6g)", acc.num_processes,
                     signatures[0, 0].item())

    def export(self, student_dir: Path, teacher_dir: Path | None = None) -> None:
        """``save_pretrained`` of the student towers (with heads as extra tensors), optionally the teacher's
        image tower in the student's text tower's company so it loads as a full model."""
        heads = {}
        for name in ("dino_head", "ibot_head"):
            head = getattr(self.core.student, name)
            if head is not None:
                heads.update({f"heads.{name}.{k}": v for k, v in head.state_dict().items()})
        save_pretrained(self.model, student_dir, heads)
        if teacher_dir is not None and self.teacher is not None and self.cfg.teacher.mode == "ema":
            teacher_model = TIPS(self.model.cfg, tokenizer=self.model.tokenizer)
            teacher_model.load_state_dict(self.model.state_dict())
            teacher_model.vision.load_state_dict(self.teacher.vision.state_dict())
            save_pretrained(teacher_model, teacher_dir)

    def resume(self, path: Path) -> None:
        acc = self.accelerator
        state = __import__("json").loads((path / "trainer.json").read_text())
        if state["world_size"] != acc.num_processes:
            raise RuntimeError(
                f"{path} was written by {state['world_size']} processes; resume it with the same number "
                f"(this launch has {acc.num_processes}) so every rank continues its own data stream"
            )
        acc.load_state(str(path / "state"))
        if (path / "teacher.safetensors").is_file() and self.teacher is not None:
            missing, unexpected = self.teacher.load_state_dict(load_file(str(path / "teacher.safetensors")), strict=False)
            if unexpected or (self.cfg.teacher.mode == "ema" and missing):
                raise KeyError(f"{path}/teacher.safetensors: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.step = state["step"]
        self.data_position = state["data_positions"][acc.process_index]
        self.skips = dict(state.get("skips", {}))
        self.nonfinite_total = state.get("nonfinite_total", 0)
        self.resumed_from = path

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        from ..data import build_train_loader

        cfg, acc = self.cfg, self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            save_config(cfg, self.output_dir / "config.yaml")
            for stale in ckpt.remove_stale_temporaries(self.output_dir):
                log.warning("removed %s, left by a save that was interrupted", stale)
        acc.wait_for_everyone()
        resume_from = ckpt.resolve_resume(cfg.run.resume, self.output_dir)
        if resume_from is not None:
            self.resume(resume_from)
        epoch_size = default_epoch_size(cfg) if (cfg.data.resampled or acc.num_processes > 1) else cfg.data.epoch_size
        dcfg = data_config(cfg, cfg.data.train, self.model.patch_size, epoch_size=epoch_size)
        loader = build_train_loader(dcfg, self.model.tokenizer, acc.process_index, acc.num_processes,
                                    start_batch=self.data_position)
        batches = loader.forever()
        acc.init_trackers("tips")
        progress = tqdm(total=cfg.run.steps, initial=self.step, disable=not acc.is_local_main_process,
                        desc="pretraining", dynamic_ncols=True)
        consecutive_bad = 0
        skips_before_resume = skips = dict(self.skips)
        window = {"data": 0.0, "total": 0.0, "samples": 0}
        self.module.train()
        while self.step < cfg.run.steps:
            t0 = time.perf_counter()
            s = self.schedules(self.step)
            freeze = self.step < fraction_to_steps(cfg.optim.freeze_last_layer_frac, cfg.run.steps)
            set_lr_wd(self.optimizer, s["lr"], s["wd"], freeze)
            logged: dict[str, float] = {}
            log_now = (self.step + 1) % cfg.run.log_every == 0 or self.step + 1 == cfg.run.steps
            skipped = False
            data_time = 0.0
            for micro in range(cfg.run.grad_accum):
                # The last micro-batch's values are the ones logged, so only it computes the teacher statistics.
                with_stats = log_now and micro == cfg.run.grad_accum - 1
                td = time.perf_counter()
                batch = next(batches).to(acc.device)
                data_time += time.perf_counter() - td
                self.data_position += 1
                with acc.accumulate(self.module):
                    losses = self.module(batch, self.teacher, s["teacher_temp"], with_stats=with_stats)
                    # One non-finite micro-batch skips the whole step: the other micro-batches' gradients
                    # are dropped too, so a skipped step never moves the weights.
                    skipped = not self._all_finite(losses["loss"]) or skipped
                    if not skipped:
                        acc.backward(losses["loss"])
                    if acc.sync_gradients and not skipped:
                        logged.update({f"grad_norm/{k}": v for k, v in self._clip().items()})
                        self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)  # accelerate zeroes only at the step boundary
                for k in ("loss",) + LOSS_TERMS:
                    logged[f"loss/{k}"] = float(losses[k].detach())
                logged.update({k: float(v) for k, v in losses.items() if k.startswith("teacher/")})
            if skipped:
                self.nonfinite_total += 1
                consecutive_bad += 1
                if consecutive_bad > cfg.run.max_nonfinite:
                    raise NonFiniteLossError(
                        f"{consecutive_bad} consecutive steps had a non-finite loss (last at step {self.step}); "
                        "lower optim.lr, check the data, or use run.mixed_precision=bf16 instead of fp16"
                    )
            else:
                consecutive_bad = 0
                self._clamp_logit_scales()
                self._update_teacher(s["momentum"])
            self.step += 1
            skips = _add(skips_before_resume, loader.skips.as_dict())
            window["data"] += data_time
            window["total"] += time.perf_counter() - t0
            window["samples"] += len(batch) * cfg.run.grad_accum * acc.num_processes
            progress.update(1)
            if "loss/loss" in logged:
                progress.set_postfix(loss=f"{logged['loss/loss']:.3f}", refresh=False)
            if log_now:
                logged.update({
                    "lr": s["lr"], "wd": s["wd"], "teacher_momentum": s["momentum"], "teacher_temp": s["teacher_temp"],
                    "temperature/alt": math.exp(-self.model.logit_scale_alt.item()),
                    "temperature/syn": math.exp(-self.model.logit_scale_syn.item()),
                    "samples_per_s": window["samples"] / max(window["total"], 1e-9),
                    "data_wait_fraction": window["data"] / max(window["total"], 1e-9),
                    "nonfinite_steps": self.nonfinite_total,
                    **{f"skipped/{k}": v for k, v in skips.items()},
                })  # fmt: skip
                acc.log(logged, step=self.step)
                window = {"data": 0.0, "total": 0.0, "samples": 0}
            if cfg.run.val_every and cfg.data.val and self.step % cfg.run.val_every == 0:
                metrics = validate(self, cfg.data.val)
                acc.log(metrics, step=self.step)
            if self.step % cfg.run.save_every == 0 or self.step == cfg.run.steps:
                self.skips = skips
                self.save()
        progress.close()
        self.check_replicas()
        final = self.output_dir / "final"
        if acc.is_main_process:
            self.export(final, self.output_dir / "final_teacher" if cfg.run.export_teacher else None)
        acc.wait_for_everyone()
        acc.end_training()
        return final


def _has_submodule(module: torch.nn.Module, name: str) -> bool:
    try:
        return module.get_submodule(name) is not None
    except AttributeError:
        return False


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: int(a.get(k, 0)) + int(b.get(k, 0)) for k in set(a) | set(b)}
