"""Resume a run (``run.resume=<checkpoint>``) at the launch's world size and write, from rank 0, the gathered
student, optimiser and teacher state plus each rank's data position to ``<out>/state.safetensors`` and
``<out>/positions.json`` (what the resharding tests compare), and the largest per-rank bytes of student, teacher and
optimiser state to ``<out>/state_bytes.json`` (what the memory claims of docs/scaling.md rest on).
Usage: ``<launcher> fsdp_state_dump.py OUT key=value...``"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from tips.train.config import load_config
from tips.train.parallel import state_bytes
from tips.train.trainer import Trainer


def state_bytes_report(trainer: Trainer) -> dict:
    """Per-rank bytes (the largest over ranks) and how many parameters are sharded DTensors."""
    counts = state_bytes(trainer.core, trainer.teacher, trainer.optimizer.optimizer)
    keys = sorted(counts)
    values = torch.tensor([float(counts[k]) for k in keys], dtype=torch.float64, device=trainer.accelerator.device)
    if trainer.accelerator.num_processes > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    report = {k: int(v) for k, v in zip(keys, values.tolist())}
    params = dict(trainer.core.named_parameters())
    report.update(parallel=trainer.cfg.run.parallel, world_size=trainer.accelerator.num_processes,
                  dtensor_parameters=sum(isinstance(p, DTensor) for p in params.values()),
                  plain_parameters=sorted(n for n, p in params.items() if not isinstance(p, DTensor))[:10])
    return report


def main() -> None:
    out = Path(sys.argv[1])
    trainer = Trainer(load_config(None, sys.argv[2:]))
    trainer.start()
    report = state_bytes_report(trainer)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd, optim_sd = get_state_dict(trainer.core, trainer.optimizer.optimizer, options=options)
    teacher_sd = {}
    if trainer.teacher is not None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        teacher_sd = get_model_state_dict(trainer.teacher, options=options)
    position = torch.tensor([trainer.loader.state_dict()["batches_seen"]])
    positions = trainer.accelerator.gather(position.to(trainer.accelerator.device)).tolist()
    if trainer.accelerator.is_main_process:
        flat = {f"model.{k}": v for k, v in model_sd.items()}
        flat.update({f"teacher.{k}": v for k, v in teacher_sd.items()})
        for name, state in optim_sd["state"].items():
            flat.update({f"optimizer.{name}.{k}": torch.as_tensor(v) for k, v in state.items()})
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().clone() for k, v in flat.items()}, str(out / "state.safetensors"))
        (out / "positions.json").write_text(json.dumps({"positions": positions, "step": trainer.step}))
        (out / "state_bytes.json").write_text(json.dumps(report, indent=2))
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
