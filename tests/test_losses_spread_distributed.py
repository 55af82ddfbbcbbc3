"""GOR on two real gloo ranks equals GOR of one process on the global batch (value and DDP-averaged gradient)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo import tcp_init_method

from tips.losses import GlobalOrthogonalRegularizer

WORLD, B, D = 2, 3, 4


def global_batch() -> torch.Tensor:
    return torch.randn(WORLD * B, D, generator=torch.Generator().manual_seed(7))


def gor_run(x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_()
    loss, stats = GlobalOrthogonalRegularizer()(x)
    loss.backward()
    return {"loss": loss.detach(), "grad": x.grad, "m1": stats["gor_mean_cos"], "m2": stats["gor_second_moment"]}


def _worker(rank: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    try:
        torch.save(gor_run(global_batch()[rank * B:(rank + 1) * B]), os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # neither rank tears gloo down while the other still talks to it (SIGABRT in CI)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("gloo-gor")
    mp.spawn(_worker, args=(tcp_init_method(), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_gor_across_two_ranks_matches_the_global_batch_loss_and_gradient(ranks):
    single = gor_run(global_batch())
    assert single["m2"] > 1 / D  # both terms of the loss are active
    assert torch.allclose(torch.stack([r["loss"] for r in ranks]).mean(), single["loss"], atol=1e-6)
    ddp_grad = torch.cat([r["grad"] for r in ranks]) / WORLD  # DDP averages the per-rank gradients
    assert torch.allclose(ddp_grad, single["grad"], atol=1e-6)
    for r in ranks:
        assert torch.allclose(r["m1"], single["m1"], atol=1e-6) and torch.allclose(r["m2"], single["m2"], atol=1e-6)
