"""Weighted k-nearest-neighbour classification on frozen CLS embeddings (``tips-probe knn``), as in DINO:
the k most cosine-similar training images vote for their class with weight exp(sim / T)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING
from torch import nn

from . import common
from .options import TaskParser, examples, parse_task_args
from .global_data import ImageFolder, read_image_folder


def knn_votes(train_emb: torch.Tensor, train_labels: torch.Tensor, query_emb: torch.Tensor, num_classes: int,
              k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """train_emb (N, D), query_emb (M, D) L2-normalised, train_labels (N,) → class votes (M, C).

    vote[c] = Σ over the k nearest training images of class c of exp(cos / T).
    """
    k = min(k, train_emb.shape[0])
    votes = []
    for s in range(0, query_emb.shape[0], chunk):
        sim, idx = (query_emb[s:s + chunk] @ train_emb.T).topk(k, dim=1)  # (m, k)
        v = torch.zeros(sim.shape[0], num_classes, dtype=sim.dtype)
        votes.append(v.scatter_add_(1, train_labels[idx], (sim / temperature).exp()))
    return torch.cat(votes)


def evaluate_knn(model: nn.Module, train: ImageFolder, val: ImageFolder, cls: str = "alt", k: int = 20,
                 temperature: float = 0.07, resolution: int | None = None, batch_size: int = 64, workers: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """Encode both folders (val labels indexed by train's classes) and classify val by weighted kNN."""
    transform = common.image_transform(model, resolution)
    train_feats, train_labels = common.encode_images(model, train.dataset(transform), batch_size, workers,
                                                     progress, desc="train images")
    val_feats, val_labels = common.encode_images(model, val.dataset(transform), batch_size, workers,
                                                 progress, desc="val images")
    votes = knn_votes(common.select_cls(train_feats, cls), train_labels, common.select_cls(val_feats, cls),
                      len(train.folders), k, temperature)
    return {
        **common.topk_accuracy(votes, val_labels, (1, 5)),
        "num_train": len(train.paths),
        "num_val": len(val.paths),
        "num_classes": len(train.folders),
        "resolution": common.transform_size(transform),
    }


EXAMPLES = examples(
    "# any two class-per-folder image sets with the same class folders (here Imagenette's)",
    "tips-probe knn --model tips-v2-b14 --train imagenette2/train --val imagenette2/val -o results k=10",
    scenes=False,
)


@dataclass
class KnnOptions(common.GlobalTaskOptions):
    train: Path = MISSING  # TRAIN/<class_folder>/<images>
    val: Path = MISSING  # VAL/<class_folder>/<images>
    k: int = 20
    temperature: float = 0.07


def build_parser() -> argparse.ArgumentParser:
    p = TaskParser(schema=KnnOptions, prog="tips-probe knn", description="DINO-style weighted kNN (weights exp(cos / T)) of a val image folder against a train image folder.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, help="(required) TRAIN/<class_folder>/<images>")
    p.add_argument("--val", type=Path, help="(required) VAL/<class_folder>/<images> (same class folders)")
    p.add_argument("--k", type=int, default=20, help="neighbours (default 20)")
    p.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(sim / T) (default 0.07)")
    common.add_global_task_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_task_args(build_parser(), argv)
    train = read_image_folder(args.train, find_names=False)
    val = read_image_folder(args.val, folders=train.folders, find_names=False)
    model, checkpoint = common.load_model(args)
    with common.precision(model, args):
        metrics = evaluate_knn(model, train, val, args.cls, args.k, args.temperature, args.resolution,
                               args.batch_size, args.num_workers, not args.no_progress)
    protocol = common.base_protocol("knn", args, checkpoint, metrics.pop("resolution"))
    protocol.update({
        "dataset": {"train": str(args.train.resolve()), "val": str(args.val.resolve())},
        "split": {"train": args.train.name, "val": args.val.name},
        "k": args.k,
        "T": args.temperature,
        "ties": "count against the target",
    })
    table = common.markdown_table(
        ["train", "val", "cls", "resolution", "k", "T", "top-1", "top-5"],
        [[train.root.name, val.root.name, args.cls, protocol["resolution"], args.k, args.temperature,
          metrics["top1"], metrics["top5"]]],
    )
    common.write_results(args.out, "knn", {"protocol": protocol, "metrics": metrics}, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
