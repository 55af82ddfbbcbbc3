"""Periodic validation on a held-out shard set: contrastive losses and text→image R@1 for both CLS tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..losses import ContrastiveLoss
from ..models.tips import l2_normalize

if TYPE_CHECKING:
    from .trainer import Trainer


def recall_at_1(query: torch.Tensor, gallery: torch.Tensor) -> float:
    """Fraction of queries (N, D) whose most similar gallery item (N, D) is their own pair (row i ↔ row i)."""
    sims = l2_normalize(query) @ l2_normalize(gallery).T
    return float((sims.argmax(dim=1) == torch.arange(len(query), device=sims.device)).float().mean())


@torch.no_grad()
def validate(trainer: "Trainer", pattern: str) -> dict[str, float]:
    """Runs on the main process with the unwrapped model (no collectives); other ranks wait."""
    from ..data import build_train_loader
    from .builders import data_config

    acc = trainer.accelerator
    metrics: dict[str, float] = {}
    if acc.is_main_process:
        cfg = trainer.cfg
        model = trainer.model
        was_training = model.training
        model.eval()
        dcfg = data_config(cfg, [pattern], model.patch_size, resampled=False, epoch_size=None, num_workers=0)
        loader = build_train_loader(dcfg, model.tokenizer, 0, 1)
        feats: dict[str, list[torch.Tensor]] = {k: [] for k in ("cls_alt", "cls_syn", "alt", "syn")}
        for i, batch in enumerate(loader):
            if i >= cfg.run.val_batches:
                break
            batch = batch.to(acc.device)
            with acc.autocast():
                out = model.encode_image(batch.global_crop)
                feats["cls_alt"].append(out.cls_alt.float())
                feats["cls_syn"].append(out.cls_syn.float())
                feats["alt"].append(model.encode_text(batch.alt_ids, batch.alt_padding).float())
                feats["syn"].append(model.encode_text(batch.syn_ids, batch.syn_padding).float())
        if feats["alt"]:
            f = {k: torch.cat(v) for k, v in feats.items()}
            loss = ContrastiveLoss("softmax", rank=0, world_size=1)
            metrics = {
                "val/contrastive_alt": float(loss(f["cls_alt"], f["alt"], model.logit_scale_alt)),
                "val/contrastive_syn": float(loss(f["cls_syn"], f["syn"], model.logit_scale_syn)),
                "val/t2i_r1_alt": recall_at_1(f["alt"], f["cls_alt"]),
                "val/t2i_r1_syn": recall_at_1(f["syn"], f["cls_syn"]),
                "val/samples": float(len(f["alt"])),
            }
        model.train(was_training)
    acc.wait_for_everyone()
    return metrics
