"""Small helpers shared by the loss modules: rank lookup, non-autograd reductions, fp32 regions.

Every reduction is the identity when ``torch.distributed`` is not initialised, so each loss runs unchanged on
one CPU process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group is up and holds more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values win; otherwise read them from ``torch.distributed`` (0, 1 when not initialised)."""
    initialised = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    return rank, world_size


def all_reduce_(x: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce without autograd (for targets and statistics); returns ``x``."""
    if is_distributed():
        dist.all_reduce(x, op=op)
    return x


def global_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the rows of x (T, K) over every rank, as (1, K) fp32, and the global row count (scalar).

    Rank-local counts may differ (e.g. masked patches), so the sum and the count are reduced together. With no
    row anywhere the mean is 0; callers check the count (on device, no host sync).
    """
    x = x.detach().float()
    stats = torch.cat([x.sum(dim=0), x.new_tensor([x.shape[0]])])  # (K + 1,)
    all_reduce_(stats)
    count = stats[-1]
    return (stats[:-1] / count.clamp_min(1)).unsqueeze(0), count


def fp32_region(x: torch.Tensor) -> torch.autocast:
    """A context that switches autocast off on x's device, so matmuls and softmaxes in it stay fp32."""
    return torch.autocast(device_type=x.device.type, enabled=False)
