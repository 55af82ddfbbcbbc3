"""Periodic validation on held-out batches: contrastive losses and text→image R@1 for both CLS tokens."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch

from ..data.batch import Batch
from ..losses import ContrastiveLoss
from ..models.tips import TIPS, l2_normalize


def recall_at_1(query: torch.Tensor, gallery: torch.Tensor) -> float:
    """Fraction of queries (N, D) whose most similar gallery item (N, D) is their own pair (row i ↔ row i)."""
    sims = l2_normalize(query) @ l2_normalize(gallery).T
    return float((sims.argmax(dim=1) == torch.arange(len(query), device=sims.device)).float().mean())


@torch.no_grad()
def validate(
    model: TIPS, batches: Iterable[Batch], device: torch.device | str = "cpu",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, float]:
    """Metrics of ``model`` on ``batches`` (global crops and both captions; no collectives, no side effects).

    Returns ``val/contrastive_{alt,syn}`` (softmax loss at the model's temperatures), ``val/t2i_r1_{alt,syn}``
    and ``val/samples``; empty when ``batches`` is.
    """
    was_training = model.training
    model.eval()
    feats: dict[str, list[torch.Tensor]] = {k: [] for k in ("cls_alt", "cls_syn", "alt", "syn")}
    for batch in batches:
        batch = batch.for_model(device)
        with autocast():
            out = model.encode_image(batch.global_crop)
            feats["cls_alt"].append(out.cls_alt.float())
            feats["cls_syn"].append(out.cls_syn.float())
            feats["alt"].append(model.encode_text(batch.alt_ids, batch.alt_padding).float())
            feats["syn"].append(model.encode_text(batch.syn_ids, batch.syn_padding).float())
    model.train(was_training)
    if not feats["alt"]:
        return {}
    f = {k: torch.cat(v) for k, v in feats.items()}
    loss = ContrastiveLoss("softmax", rank=0, world_size=1)
    return {
        "val/contrastive_alt": float(loss(f["cls_alt"], f["alt"], model.logit_scale_alt)),
        "val/contrastive_syn": float(loss(f["cls_syn"], f["syn"], model.logit_scale_syn)),
        "val/t2i_r1_alt": recall_at_1(f["alt"], f["cls_alt"]),
        "val/t2i_r1_syn": recall_at_1(f["syn"], f["cls_syn"]),
        "val/samples": float(len(f["alt"])),
    }
