"""How one launch runs the train module: a :class:`Parallel` strategy, chosen once by :func:`build_parallel`.

- :class:`Single`: one process; accelerate moves the module to the device and autocasts its forward.
- :class:`DDP`: accelerate's ``DistributedDataParallel``; gradients are all-reduced on the last micro-batch only.
- :class:`FSDP`: PyTorch FSDP2 (``fully_shard``) applied here, the same code on CPU (gloo) and GPU. accelerate (or
  torchrun) launches the processes and owns devices and the process group; it does not wrap the model (its FSDP
  plugin is ignored on CPU and would put DDP semantics around ours). The student: ``fully_shard`` on every
  transformer block of both towers, then each head, then the :class:`~tips.train.builders.TrainModule` root
  (embeddings, final norms, temperatures, objective state). The teacher is sharded exactly like the student (same
  mesh, same dim-0 shards), so the EMA step moves local shards against local shards with no gather; head-only EMA
  shards only its heads (the tower is the student's); a frozen teacher is sharded the same way and only ever runs
  under ``no_grad``. ``run.mixed_precision=bf16``: blocks and heads keep fp32 shards, all-gather and compute in
  bf16 and reduce gradients in fp32; the root stays fp32 (temperatures, centres), with autocast around the forward
  as accelerate does for DDP.

Tensor parallelism would be a fourth class with the same five methods. Checkpoints do not depend on the strategy
(:mod:`tips.train.checkpointer` writes one format for all of them).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

T = TypeVar("T")
log = logging.getLogger("tips.train")


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
    """Shard the teacher like the student; head-only EMA shards only its own heads. Its forward runs under
    ``no_grad``, so no backward reshards it: a forward hook reshards every unit after it."""
    from torch.distributed.fsdp import fully_shard

    mesh = device_mesh(device)
    inner, root = _policies(mixed_precision)
    heads = _heads(teacher)
    for head in heads:
        fully_shard(head, mesh=mesh, mp_policy=inner, reshard_after_forward=True)
    units = heads
    if kind != "head_only_ema":  # a head-only EMA tower belongs to the student's FSDP tree
        blocks = _blocks(teacher.vision)
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=inner, reshard_after_forward=True)
        fully_shard(teacher, mesh=mesh, mp_policy=root, reshard_after_forward=True)
        units = [teacher, *heads, *blocks]

    def reshard_after_forward(module: nn.Module, args: tuple, output: object) -> None:
        for unit in units:
            unit.reshard()

    teacher.register_forward_hook(reshard_after_forward)


def full_value(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank calls it), else ``t``."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, else ``t``."""
    return t.to_local() if isinstance(t, DTensor) else t




class Parallel:
    """The strategy interface (and what one process does): ``prepare`` the module and optimiser, run each
    micro-batch in :meth:`micro_batch`, call :meth:`finish_gradients` before clipping, and get the whole model for
    validation (:meth:`on_full_model`) and export (:meth:`full_state_dict`)."""

    name = "single"

    def __init__(self, accelerator, mixed_precision: str, reshard_after_forward: bool) -> None:
        self.accelerator = accelerator
        self.mixed_precision = mixed_precision
        self.reshard_after_forward = reshard_after_forward

    def prepare(self, module: nn.Module, teacher: nn.Module | None, kind: str,
                make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]):
        """Place (and wrap or shard) ``module`` and ``teacher``; returns (module to call, accelerate optimiser)."""
        if teacher is not None:
            teacher.to(self.accelerator.device)
        optimizer = make_optimizer(module)
        return self.accelerator.prepare(module, optimizer)

    def micro_batch(self, module: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Context of one micro-batch's forward and backward; gradients are synced only when ``last``."""
        return self.accelerator.accumulate(module)

    def finish_gradients(self) -> None:
        """Gradients no hook synced (FSDP's whole scalars); a no-op here."""

    def on_full_model(self, module: nn.Module, fn: Callable[[], T]) -> T | None:
        """``fn()`` with the whole model in place: on the main process only (every rank holds all weights)."""
        return fn() if self.accelerator.is_main_process else None

    def full_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole state dict of ``module`` on the main process, None elsewhere (call on every rank)."""
        return module.state_dict() if self.accelerator.is_main_process else None

    def check_replicas(self, module: nn.Module) -> None:
        """After training: verify that ranks agree where they should (nothing to check on one process)."""


class Single(Parallel):
    """One process: accelerate places the module and autocasts its forward."""


class DDP(Parallel):
    """accelerate's DistributedDataParallel: every rank holds all weights, gradients are all-reduced."""

    name = "ddp"

    @torch.no_grad()
    def check_replicas(self, module: nn.Module) -> None:
        """All ranks must hold identical weights (DDP keeps them so); a divergence is a bug worth stopping for."""
        acc = self.accelerator
        params = torch.cat([p.detach().double().flatten() for p in module.parameters()])
        signature = torch.stack([params.sum(), params.square().sum()]).to(acc.device)
        signatures = acc.gather(signature[None]).view(acc.num_processes, 2)
        spread = (signatures - signatures[0]).abs().max().item()
        if spread > 1e-6 * max(1.0, signatures.abs().max().item()):
            raise RuntimeError(f"ranks hold different weights after training (signature spread {spread:.3g})")
        if acc.is_main_process:
            log.info("all %d ranks hold identical weights (parameter signature %.6g)", acc.num_processes,
                     signatures[0, 0].item())


class FSDP(Parallel):
    """FSDP2 on the process group accelerate (or torchrun) set up (see the module docstring)."""

    name = "fsdp"

    def __init__(self, accelerator, mixed_precision: str, reshard_after_forward: bool) -> None:
        from accelerate.utils import DistributedType

        if accelerator.distributed_type not in (DistributedType.NO, DistributedType.MULTI_CPU,
                                                DistributedType.MULTI_GPU):
            raise RuntimeError(
                f"run.parallel=fsdp shards the model itself, but accelerate was launched as "
                f"{accelerator.distributed_type}: launch with a plain multi-GPU config "
                "(configs/accelerate/fsdp_multinode.yaml) or torchrun"
            )
        _policies(mixed_precision)  # fp16 is refused before anything is built
        super().__init__(accelerator, mixed_precision, reshard_after_forward)
        ensure_process_group(accelerator.device)
        self.replicated: list[nn.Parameter] = []

    def prepare(self, module, teacher, kind, make_optimizer):
        device = self.accelerator.device
        module.to(device)
        if teacher is not None:
            teacher.to(device)
        self.replicated = replicated_parameters(module)
        shard_student(module, device, self.mixed_precision, self.reshard_after_forward)
        if teacher is not None:
            shard_teacher(teacher, kind, device, self.mixed_precision)
        # after sharding: the optimiser must hold the DTensor parameters
        return module, self.accelerator.prepare(make_optimizer(module))

    def micro_batch(self, module, last):
        module.set_requires_gradient_sync(last)  # accelerate's no_sync does not know FSDP2
        stack = contextlib.ExitStack()
        stack.enter_context(self.accelerator.accumulate(module))
        stack.enter_context(self.accelerator.autocast())  # the unprepared module gets what prepare gives DDP
        return stack

    def finish_gradients(self) -> None:
        average_gradients(self.replicated)

    def on_full_model(self, module, fn):
        # every rank takes part in the all-gathers; the root's own weights are gathered by hand
        module.unshard()
        try:
            return fn()
        finally:
            module.reshard()

    def full_state_dict(self, module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if self.accelerator.is_main_process else None

    def check_replicas(self, module):
        log.info("parameters are sharded over %d ranks (FSDP)", self.accelerator.num_processes)


def build_parallel(accelerator, parallel: str, mixed_precision: str, reshard_after_forward: bool) -> Parallel:
    """The launch's strategy for ``run.parallel``: the one place that chooses between them."""
    if parallel == "fsdp":
        return FSDP(accelerator, mixed_precision, reshard_after_forward)
    if accelerator.num_processes > 1:
        return DDP(accelerator, mixed_precision, reshard_after_forward)
    return Single(accelerator, mixed_precision, reshard_after_forward)
