"""The EMA teacher: θ_t ← m·θ_t + (1 − m)·θ_s after each optimiser step, never trained by gradients."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen, eval-mode deep copy of ``student`` with stochastic depth switched off."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    for m in teacher.modules():
        if hasattr(m, "drop_prob"):  # timm DropPath
            m.drop_prob = 0.0
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In-place EMA of every parameter of ``teacher`` towards the same-named one of ``student``.

    Both modules must have identical parameter names (the teacher is a copy of the student, possibly
    unwrapped from DDP by the caller). Under FSDP both are sharded alike and the update runs on the local
    shards (no gather). Buffers are copied, not averaged.
    """
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        missing = sorted(set(t_params) ^ set(s_params))[:5]
        raise KeyError(f"teacher and student parameters differ: {missing}")
    names = list(t_params)
    sharded = [n for n in names if isinstance(t_params[n], DTensor) != isinstance(s_params[n], DTensor)]
    if sharded:
        raise TypeError(f"teacher and student are sharded differently (e.g. {sharded[0]}): shard both with "
                        "tips.train.parallel or neither")
    t_list = [_local(t_params[n]) for n in names]
    s_list = [_local(s_params[n]).detach().to(t_params[n].dtype) for n in names]
    torch._foreach_mul_(t_list, momentum)
    torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)
    s_buffers = dict(student.named_buffers())
    for name, buf in teacher.named_buffers():
        if name in s_buffers:
            buf.copy_(s_buffers[name])


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t
