"""Resume a run (``run.resume=<checkpoint>``) at the launch's world size and write, from rank 0, the gathered
student, optimiser and teacher state plus each rank's data position to ``<out>/state.safetensors`` and
``<out>/positions.json``: what the resharding tests compare. Usage: ``<launcher> fsdp_state_dump.py OUT key=value...``"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

from tips.train.config import load_config
from tips.train.trainer import Trainer


def main() -> None:
    out = Path(sys.argv[1])
    trainer = Trainer(load_config(None, sys.argv[2:]))
    trainer.start()
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
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
