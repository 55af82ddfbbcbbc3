"""Two real gloo ranks on CPU: the distributed losses equal the single-process losses on the global batch.

One spawn serves every test here (process start-up dominates the cost). Each rank takes its slice of one
seeded global batch, runs the losses, and saves its values and gradients; the tests rebuild the global
quantities the way DDP would (per-rank parameter gradients averaged) and compare them with one process.
"""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo import tcp_init_method

from tips.losses import ContrastiveLoss, DINOLoss, IBOTPatchLoss, sinkhorn_knopp, target_statistics

WORLD = 2
B, D, K = 3, 8, 6
PATCH_COUNTS = (5, 2)  # unequal per-rank patch counts, as masking can give


def global_batch() -> dict[str, torch.Tensor]:
    """The same tensors on every rank and in the parent."""
    gen = torch.Generator().manual_seed(1234)
    return {
        "image": torch.randn(WORLD * B, D, generator=gen),
        "text": torch.randn(WORLD * B, D, generator=gen),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
        "logit_bias": torch.tensor(-3.0),
        "teacher_cls": torch.randn(WORLD * B, K, generator=gen),
        "student_cls": torch.randn(WORLD * B, 2, K, generator=gen),
        "teacher_patches": torch.randn(sum(PATCH_COUNTS), K, generator=gen),
    }


def rank_slices(rank: int) -> tuple[slice, slice]:
    """This rank's rows of the image batch and of the patch batch."""
    start = sum(PATCH_COUNTS[:rank])
    return slice(rank * B, (rank + 1) * B), slice(start, start + PATCH_COUNTS[rank])


def contrastive_run(kind: str, data: dict, rows: slice | None = None) -> dict[str, torch.Tensor]:
    """Loss and gradients wrt features, logit scale and bias, on rows of the batch (all rows by default)."""
    rows = rows if rows is not None else slice(None)
    image = data["image"][rows].clone().requires_grad_()
    text = data["text"][rows].clone().requires_grad_()
    scale = data["logit_scale"].clone().requires_grad_()
    bias = data["logit_bias"].clone().requires_grad_()
    loss = ContrastiveLoss(kind)(image, text, scale, bias if kind == "sigmoid" else None)
    loss.backward()
    grad_bias = bias.grad if bias.grad is not None else torch.zeros(())
    return {"loss": loss.detach(), "image": image.grad, "text": text.grad, "scale": scale.grad, "bias": grad_bias}


def _worker(rank: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    try:
        data = global_batch()
        rows, patches = rank_slices(rank)
        result = {kind: contrastive_run(kind, data, rows) for kind in ("softmax", "sigmoid")}
        result["sinkhorn"] = sinkhorn_knopp(data["teacher_patches"][patches], temp=0.1)
        dino = DINOLoss(K, center_init="zeros")
        _, result["dino_stats"] = dino.compute(data["student_cls"][rows], data["teacher_cls"][rows], 0.04, True)
        ibot = IBOTPatchLoss(K, center_init="zeros")
        local = data["teacher_patches"][patches]
        _, result["ibot_stats"] = ibot.compute(torch.randn_like(local), local, torch.ones(len(local)), 0.04, True)
        result["dino_center"], result["ibot_center"] = dino.center, ibot.center
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # neither rank tears gloo down while the other still talks to it (SIGABRT in CI)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(tcp_init_method(), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def ddp_view(per_rank: list[dict]) -> dict[str, torch.Tensor]:
    """What DDP optimises: the mean of the rank losses, and every parameter gradient averaged over ranks.

    Features are rank-local slices of one global tensor, so the averaged gradient of that tensor is the
    concatenation of the per-rank gradients divided by the world size.
    """
    return {
        "loss": torch.stack([r["loss"] for r in per_rank]).mean(),
        "image": torch.cat([r["image"] for r in per_rank]) / WORLD,
        "text": torch.cat([r["text"] for r in per_rank]) / WORLD,
        "scale": torch.stack([r["scale"] for r in per_rank]).mean(),
        "bias": torch.stack([r["bias"] for r in per_rank]).mean(),
    }


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_contrastive_loss_matches_global_loss_across_two_ranks(ranks, kind):
    distributed = ddp_view([r[kind] for r in ranks])
    single = contrastive_run(kind, global_batch())
    for name, value in single.items():
        assert torch.allclose(distributed[name], value, atol=1e-5, rtol=1e-4), name


def test_sinkhorn_across_two_ranks_matches_one_process_on_the_global_batch(ranks):
    distributed = torch.cat([r["sinkhorn"] for r in ranks])
    assert torch.allclose(distributed, sinkhorn_knopp(global_batch()["teacher_patches"], temp=0.1), atol=1e-6)


def test_centres_are_updated_with_the_global_mean_across_two_ranks(ranks):
    data = global_batch()
    for r in ranks:
        assert torch.allclose(r["dino_center"], 0.1 * data["teacher_cls"].mean(0, keepdim=True), atol=1e-6)
        # Unequal patch counts per rank: the mean is over all patches, not a mean of rank means.
        assert torch.allclose(r["ibot_center"], 0.1 * data["teacher_patches"].mean(0, keepdim=True), atol=1e-6)


def test_logged_target_statistics_are_those_of_the_global_batch_across_two_ranks(ranks):
    data = global_batch()
    dino_targets = DINOLoss(K, center_init="zeros").teacher_probs(data["teacher_cls"], 0.04)
    ibot_targets = IBOTPatchLoss(K, center_init="zeros").teacher_probs(data["teacher_patches"], 0.04)
    for r in ranks:  # unequal patch counts: every patch weighs the same, whichever rank holds it
        assert torch.allclose(r["dino_stats"], target_statistics(dino_targets), atol=1e-6)
        assert torch.allclose(r["ibot_stats"], target_statistics(ibot_targets), atol=1e-6)
    assert not torch.allclose(ranks[0]["ibot_stats"], target_statistics(ibot_targets[:PATCH_COUNTS[0]]), atol=1e-3)
