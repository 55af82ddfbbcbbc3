"""What a run keeps on disk: resumable checkpoints, resume, the ``save_pretrained`` exports, the final check.

A mixin of :class:`~tips.train.trainer.Trainer` (it reads the trainer's accelerator, module, teacher, loader
and counters); the folder layout and the atomic rename live in :mod:`tips.train.checkpointing`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..io.atomic import write_json_atomic
from ..formats.pretrained import save_pretrained
from ..models.tips import TIPS
from . import checkpointing as ckpt
from . import sharded_state

log = logging.getLogger("tips.train")


class RunState:
    """Checkpoint, resume and export methods of the trainer."""

    def save(self) -> Path:
        """Write a complete checkpoint atomically, then prune old ones (main process writes shared files)."""
        acc = self.accelerator
        tmp = ckpt.temporary_dir(self.output_dir, self.step) if acc.is_main_process else None
        tmp_path = [str(tmp) if tmp else None]
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(tmp_path)
        tmp = Path(tmp_path[0])
        if self.sharded:  # every rank writes its own shards (docs/scaling.md)
            sharded_state.save(tmp / "dcp", self.core, self.optimizer.optimizer, self.teacher)
            sharded_state.save_rng(tmp / "rng", acc.process_index)
        else:
            acc.save_state(str(tmp / "state"), safe_serialization=True)
        # The loader's own position (batches this rank consumed) is what it resumes from.
        positions = acc.gather(torch.tensor([self.loader.state_dict()["batches_seen"]], device=acc.device)).tolist()
        self.export(tmp / "export", tmp / "export_teacher" if self.cfg.run.export_teacher else None)
        if acc.is_main_process:
            teacher_sd = self.teacher.trainable_state() if (self.teacher is not None and not self.sharded) else {}
            if teacher_sd:
                save_file(teacher_sd, str(tmp / "teacher.safetensors"))
            write_json_atomic(tmp / "trainer.json", {
                "step": self.step, "data_positions": positions, "skips": self.skips(),
                "nonfinite_total": self.nonfinite_total, "world_size": acc.num_processes,
                "batch_size": self.cfg.run.batch_size, "parallel": self.cfg.run.parallel,
            }, indent=2)  # fmt: skip
            ckpt.finalize(tmp, self.output_dir, self.step, self.cfg.run.keep_last)
        acc.wait_for_everyone()
        return ckpt.checkpoint_root(self.output_dir) / ckpt.step_dir_name(self.step)

    def resume(self, path: Path) -> int:
        """Restore model, optimiser, RNG, teacher and counters from ``path``; returns this rank's data position."""
        acc = self.accelerator
        state = json.loads((path / "trainer.json").read_text())
        written_by = state.get("parallel", "ddp")
        if written_by != self.cfg.run.parallel:
            raise RuntimeError(f"{path} was written with run.parallel={written_by}; resume it with the same setting")
        if self.sharded:
            return self._resume_sharded(path, state)
        if state["world_size"] != acc.num_processes:
            raise RuntimeError(
                f"{path} was written by {state['world_size']} processes; resume it with the same number "
                f"(this launch has {acc.num_processes}) so every rank continues its own data stream "
                "(run.parallel=fsdp checkpoints reshard to any number)"
            )
        acc.load_state(str(path / "state"))
        if (path / "teacher.safetensors").is_file() and self.teacher is not None:
            missing, unexpected = self.teacher.load_state_dict(load_file(str(path / "teacher.safetensors")), strict=False)
            if unexpected or (self.plan.teacher == "ema" and missing):
                raise KeyError(f"{path}/teacher.safetensors: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.step = state["step"]
        self.skips_before_resume = dict(state.get("skips", {}))
        self.nonfinite_total = state.get("nonfinite_total", 0)
        self.resumed_from = path
        return state["data_positions"][acc.process_index]

    def _resume_sharded(self, path: Path, state: dict) -> int:
        """DCP resume at any world size: weights, optimiser and teacher exactly; the data stream continues from
        the same global number of samples (the very same stream only at the same world size)."""
        acc = self.accelerator
        sharded_state.load(path / "dcp", self.core, self.optimizer.optimizer, self.teacher)
        same_world = state["world_size"] == acc.num_processes
        if not sharded_state.load_rng(path / "rng", acc.process_index) or not same_world:
            log.warning("%s was written by %d processes, this launch has %d: weights, optimiser and teacher are "
                        "restored exactly, the data stream continues from the same number of samples",
                        path, state["world_size"], acc.num_processes)
        self.step = state["step"]
        self.skips_before_resume = dict(state.get("skips", {}))
        self.nonfinite_total = state.get("nonfinite_total", 0)
        self.resumed_from = path
        return sharded_state.resumed_position(state["data_positions"], state.get("batch_size", self.cfg.run.batch_size),
                                              self.cfg.run.batch_size, acc.num_processes, acc.process_index)

    def export(self, student_dir: Path, teacher_dir: Path | None = None) -> None:
        """``save_pretrained`` of the student towers (with heads as extra tensors), optionally the teacher's
        image tower in the student's text tower's company so it loads as a full model. Call on every rank:
        under FSDP the weights are gathered first (a collective); the main process writes."""
        export_teacher = teacher_dir is not None and self.teacher is not None and self.plan.teacher == "ema"
        if self.sharded:
            student_sd = sharded_state.gathered(self.core)
            teacher_sd = sharded_state.gathered(self.teacher) if export_teacher else {}
        elif self.accelerator.is_main_process:
            student_sd = self.core.state_dict()
            teacher_sd = self.teacher.state_dict() if export_teacher else {}
        if not self.accelerator.is_main_process:
            return
        model = self.model if not self.sharded else self._plain_model(
            {k[len("student.model."):]: v for k, v in student_sd.items() if k.startswith("student.model.")})
        heads = {}
        for name in ("dino_head", "ibot_head"):
            prefix = f"student.{name}."
            heads.update({f"heads.{name}.{k[len(prefix):]}": v for k, v in student_sd.items() if k.startswith(prefix)})
        save_pretrained(model, student_dir, heads)
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

    @torch.no_grad()
    def check_replicas(self) -> None:
        """All ranks must hold identical weights (DDP keeps them so); a divergence is a bug worth stopping for."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return
        if self.sharded:  # each rank holds other weights by design: nothing to compare
            log.info("parameters are sharded over %d ranks (FSDP)", acc.num_processes)
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

    def finish(self) -> Path:
        """Check the replicas, write ``final/`` (and ``final_teacher/``), close the trackers."""
        acc = self.accelerator
        self.check_replicas()
        final = self.output_dir / "final"
        self.export(final, self.output_dir / "final_teacher" if self.cfg.run.export_teacher else None)
        acc.wait_for_everyone()
        acc.end_training()
        return final
