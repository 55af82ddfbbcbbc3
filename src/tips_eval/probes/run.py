"""Python API of a dense probe run: ``run_probe(model, "scenes:/data/probe", cfg, out_dir="results")``."""

from __future__ import annotations

import datetime
from pathlib import Path

import torch

import tips

from ..datasets import open_dataset
from ..features import FeatureSpec, cached_features, parse_resolution, resolve_layers, weights_identity
from ..compare import dense_record, log_records
from ..report import markdown, run_name, write_report
from .config import ProbeConfig, to_dict
from .dense import run_dpt
from .depth import depth_range, run_depth
from .normals import run_normals
from .segmentation import run_segmentation


def feature_spec(model: tips.TIPS, cfg: ProbeConfig) -> FeatureSpec:
    """The frozen-feature settings of a config for this model (the dinov2 protocol feeds its crops)."""
    resolution = cfg.features.resolution if cfg.protocol == "fast" else "x".join(map(str, cfg.augment.crop))
    return FeatureSpec(
        resolution=parse_resolution(resolution, model.patch_size),
        layers=resolve_layers(cfg.features.layers, model.cfg.vision.depth),
        norm=cfg.features.norm,
        cls=cfg.features.cls,
        dtype=cfg.features.dtype,
    )


def head_choice(cfg: ProbeConfig) -> str:
    return {"segmentation": cfg.seg.head, "depth": cfg.depth.head, "normals": cfg.normals.head}[cfg.task]


def save_head(head: tips.DenseHead, out_dir: Path, name: str) -> dict[str, str]:
    """A trained DPT head in our format (``{name}-head/``) and, for the official architecture, in the official
    Scenic layout (``{name}-head.zip``) too; probe3d's decoder has no official layout. The official layout stores no
    depth-bin range: a depth head trained on another range than [0.001, 10] m reads back with the official one."""
    paths = {"head": str(tips.save(head, out_dir / f"{name}-head"))}
    if head.cfg.preset == "tips":
        paths["head_official"] = str(tips.save(head, out_dir, format="official", name=f"{name}-head"))
    return paths


def run_probe(
    model: tips.TIPS,
    dataset: str,
    cfg: ProbeConfig,
    out_dir: str | Path | None = "results",
    checkpoint: dict | None = None,
    checkpoint_label: str = "model",
    cache_dir: str | Path | None = None,
    train_split: str = "train",
    val_split: str = "val",
    command: list[str] | None = None,
) -> dict:
    """Train and evaluate ``cfg.task`` on ``dataset`` (``KIND:/path``); write JSON / markdown / PNG to ``out_dir``.

    checkpoint: identity of the weights for the feature cache (``tips_eval.features.checkpoint_identity``); without
    it, a hash of the image tower's weights.
    Returns the result dict (with ``paths`` when ``out_dir`` is given).
    """
    model.eval()
    torch.manual_seed(cfg.seed)
    train, val = open_dataset(dataset, train_split), open_dataset(dataset, val_split)
    spec = feature_spec(model, cfg)
    checkpoint = checkpoint or weights_identity(model)

    def cache_fn(ds, s):
        return cached_features(model, checkpoint, ds, s, cache_dir, cfg.extract_batch_size, cfg.num_workers, cfg.progress)

    runner = {"segmentation": run_segmentation, "depth": run_depth, "normals": run_normals}[cfg.task]
    if head_choice(cfg) == "dpt":
        runner = run_dpt
    outcome = runner(model, train, val, cfg, spec, cache_fn)
    result = {
        "task": cfg.task,
        "protocol": cfg.protocol,
        "checkpoint": {**checkpoint, "label": checkpoint_label},
        "dataset": {"spec": dataset, "name": val.info.name, "root": val.info.root, "train_split": train_split,
                    "val_split": val_split, "num_train": len(train), "num_val": len(val),
                    "train_source": train.info.source, "val_source": val.info.source},
        "features": spec.to_dict(),
        "details": outcome.protocol,
        "metrics": outcome.metrics,
        "timings": outcome.timings,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "tips_version": tips.__version__,
        "command": command,
    }
    if out_dir is not None:
        tag = cfg.protocol if outcome.head is None else f"{cfg.protocol}-dpt-{cfg.dpt.preset}"
        name = run_name(cfg.task, val.info.name, tag, checkpoint_label, cfg.seed, checkpoint)
        if outcome.head is not None:
            result["head_paths"] = save_head(outcome.head, Path(out_dir), name)
        paths = write_report(result, outcome.vis, out_dir, name, val.info.class_names or None,
                             depth_range(cfg, val.info) if cfg.task == "depth" else None)
        result["paths"]["log"] = str(log_records(out_dir, [dense_record(result, paths["json"])]))
    result["markdown"] = markdown(result)
    return result
