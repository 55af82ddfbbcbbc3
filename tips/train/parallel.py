"""``run.parallel=fsdp``: PyTorch FSDP2 (``fully_shard``) applied by the trainer, the same code on CPU (gloo) and GPU.

accelerate (or torchrun) launches the processes and owns devices and the process group; it does not wrap the
model (its FSDP plugin is ignored on CPU and would put DDP semantics around ours). Here:
- the student: ``fully_shard`` on every transformer block of both towers, then each head, then the
  :class:`~tips.train.builders.TrainModule` root (embeddings, final norms, temperatures, objective state);
- the teacher: sharded exactly like the student (same mesh, same dim-0 shards), so the EMA step moves local
  shards against local shards with no gather; head-only EMA shards only its heads (the tower is the student's);
  a frozen teacher is sharded the same way and only ever runs under ``no_grad``;
- ``run.mixed_precision=bf16``: blocks and heads keep fp32 shards, all-gather and compute in bf16 and reduce
  gradients in fp32; the root stays fp32 (temperatures, centres), with autocast around the forward as accelerate
  does for DDP.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor


def ensure_process_group(device: torch.device) -> None:
    """A single-process launch (``python -m tips.cli.train``) has no process group; FSDP needs one (of size 1)."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def device_mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),))


def _policies(mixed_precision: str):
    """(policy of blocks and heads, policy of the roots) for ``run.mixed_precision``."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if mixed_precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32), MixedPrecisionPolicy()
    if mixed_precision == "no":
        return MixedPrecisionPolicy(), MixedPrecisionPolicy()
    raise ValueError(f"run.mixed_precision={mixed_precision!r} with run.parallel=fsdp: use 'bf16' or 'no' "
                     "(fp16 needs a sharded gradient scaler, which tips does not ship)")


def _blocks(vision: nn.Module, text: nn.Module | None = None) -> list[nn.Module]:
    blocks = list(vision.blocks)
    if text is not None:
        blocks += list(text.transformer.resblocks)
    return blocks


def _heads(owner: nn.Module) -> list[nn.Module]:
    names = ("dino_head", "ibot_head", "pixel_decoder", "feature_proj")
    return [getattr(owner, n) for n in names if getattr(owner, n, None) is not None]


def shard_student(module: nn.Module, device: torch.device, mixed_precision: str, reshard_after_forward: bool) -> None:
    """Shard the train module in place: blocks of both towers, heads, then the root (see the module docstring).

    Call after ``compile_blocks`` (the compiled call sits inside FSDP's hooks) and before building the
    optimiser (the parameters become DTensors).
    """
    from torch.distributed.fsdp import fully_shard

    mesh = device_mesh(device)
    inner, root = _policies(mixed_precision)
    student = module.student
    for part in _blocks(student.model.vision, student.model.text) + _heads(student):
        fully_shard(part, mesh=mesh, mp_policy=inner, reshard_after_forward=reshard_after_forward)
    fully_shard(module, mesh=mesh, mp_policy=root, reshard_after_forward=reshard_after_forward,
                ignored_params=set(replicated_parameters(module)))


def replicated_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Scalar parameters (temperatures, SigLIP biases): FSDP cannot shard 0-d tensors, so every rank keeps them
    whole and :func:`average_gradients` syncs their gradients as DDP would."""
    return [p for p in module.parameters() if p.ndim == 0]


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over all ranks in one all-reduce (a no-op on one rank)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or dist.get_world_size() == 1:
        return
    flat = torch.stack([g.reshape(()) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    for g, value in zip(grads, flat):
        g.copy_(value)


def shard_teacher(teacher: nn.Module, kind: str, device: torch.device, mixed_precision: str) -> None:
    """Shard the teacher like the student. Its forward runs under ``no_grad`` (no backward would reshard it), so
    :class:`~tips.train.builders.TrainModule` reshards its ``fsdp_units`` after it; head-only EMA shards only
    its own heads."""
    from torch.distributed.fsdp import fully_shard

    mesh = device_mesh(device)
    inner, root = _policies(mixed_precision)
    heads = _heads(teacher)
    for head in heads:
        fully_shard(head, mesh=mesh, mp_policy=inner, reshard_after_forward=True)
    if kind == "head_only_ema":  # the tower belongs to the student's FSDP tree
        teacher.fsdp_units = heads
        return
    blocks = _blocks(teacher.vision)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=inner, reshard_after_forward=True)
    fully_shard(teacher, mesh=mesh, mp_policy=root, reshard_after_forward=True)
    teacher.fsdp_units = [teacher, *heads, *blocks]  # a plain list: not registered as submodules


def full_value(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank calls it), else ``t``."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, else ``t``."""
    return t.to_local() if isinstance(t, DTensor) else t


def _key(t: torch.Tensor) -> tuple:
    t = local(t)
    return (t.device, t.data_ptr(), t.numel(), t.dtype)


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this rank holds for ``tensors`` (local shards of DTensors), each one counted once."""
    seen, total = set(), 0
    for t in tensors:
        key = _key(t)
        if key in seen:
            continue
        seen.add(key)
        t = local(t)
        total += t.numel() * t.element_size()
    return total


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def state_bytes(module: nn.Module, teacher: nn.Module | None, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Per-rank bytes of student + objective, teacher (its own tensors only) and optimiser state."""
    own = {_key(t) for t in list(module.parameters()) + list(module.buffers())}
    teacher_tensors = [] if teacher is None else [
        t for t in list(teacher.parameters()) + list(teacher.buffers()) if _key(t) not in own
    ]
    out = {
        "student": local_bytes(list(module.parameters()) + list(module.buffers())),
        "teacher": local_bytes(teacher_tensors),
        "optimizer": local_bytes(optimizer_tensors(optimizer)),
    }
    out["total"] = sum(out.values())
    return out
