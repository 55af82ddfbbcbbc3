"""DPT probe heads (``--head dpt``) for segmentation, depth and normals on frozen cached features.

The backbone stays frozen: the four DPT blocks (``tips.models.dpt_layers``) are cached once like the linear
probes' features (fp16, memory-mapped: patch tokens of the four blocks side by side, and their CLS1), with the final
LN for the ``tips`` preset and without it for ``probe3d``. The head is ``tips.models.DenseHead``; its task output
is resized to the ground truth bilinearly (``tips``, as ``predict``) or bicubically (``probe3d``, as probe3d).
Losses: cross-entropy; the depth probe's SigLoss + gradient loss on the bin expectation; the normals losses.
The trained head is returned with the outcome so ``run_probe`` can save it (our format, and the official layout for
the ``tips`` preset).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

import tips
from tips.models import DenseHead, Level, build_head

from ..datasets import IGNORE_INDEX, DenseDataset
from ..features import FeatureCache, FeatureSpec
from .common import ProbeOutcome, VisSample, head_device, make_optimizer, optimizer_step, training_batches
from .config import ProbeConfig
from .depth import DepthObjective, _Evaluator, depth_range
from .metrics import NormalMetrics, confusion_matrix, segmentation_metrics
from .normals import NormalsObjective, normals_picture, out_channels
from .segmentation import class_subset


def cache_levels(cache: FeatureCache, index: np.ndarray, device) -> list[Level]:
    """Rows of a 4-block cache with CLS → four (CLS1 (B, D), patch tokens (B, h, w, D)) levels, float32."""
    if cache.cls is None:
        raise ValueError(f"{cache.path}: a DPT head needs CLS1 in the cache (features.cls=true)")
    index = np.sort(np.asarray(index))
    patch = torch.from_numpy(np.asarray(cache.patch[index], dtype=np.float32)).to(device)  # (B, h, w, 4D)
    cls = torch.from_numpy(np.asarray(cache.cls[index], dtype=np.float32)).to(device)  # (B, 4D)
    d = patch.shape[-1] // 4
    return [(cls[:, i * d: (i + 1) * d], patch[..., i * d: (i + 1) * d]) for i in range(4)]


def make_dpt_head(task: str, model: tips.TIPS, cfg: ProbeConfig, spec: FeatureSpec, outputs: int, **kw) -> DenseHead:
    """A seeded random head of ``cfg.dpt`` reading the cached blocks ``spec.layers``, on the model's device."""
    torch.manual_seed(cfg.seed)
    head = build_head(task, model.width, outputs, cfg.dpt.preset, fusion=cfg.dpt.fusion, layers=tuple(spec.layers),
                      **kw)
    return head.to(next(model.parameters()).device)


def train_dpt(head: DenseHead, cache: FeatureCache, cfg: ProbeConfig, loss_fn) -> DenseHead:
    """``loss_fn(head, levels, cache rows) → scalar`` minimised over ``cfg.optim`` steps; backbone untouched."""
    optimizer = make_optimizer(head, cfg.optim)
    device = head_device(head)
    head.train()
    for step, idx in training_batches(len(cache), cfg, f"{head.task} probe (dpt, {head.cfg.preset})"):
        optimizer_step(optimizer, loss_fn(head, cache_levels(cache, idx, device), idx, step), step, cfg.optim)
    return head.eval()


def _batches(cache: FeatureCache, batch_size: int):
    for start in range(0, len(cache), batch_size):
        yield np.arange(start, min(start + batch_size, len(cache)))


@torch.no_grad()
def _predictions(head: DenseHead, cache: FeatureCache, batch_size: int):
    """(row, raw output (1, K, h', w')) for every cached row, in order."""
    for idx in _batches(cache, batch_size):
        raw = head.decode(cache_levels(cache, idx, head_device(head))).float().cpu()
        for j, i in enumerate(idx):
            yield int(i), raw[j: j + 1]


def _vis_features(cache: FeatureCache, i: int) -> np.ndarray:
    patch = np.asarray(cache.patch[i], dtype=np.float32)
    return patch[..., -patch.shape[-1] // 4:]  # the deepest block


# ------------------------------------------------------------------ the three tasks
def _segmentation(model, train, val, cfg, spec, train_cache, val_cache) -> tuple[DenseHead, dict, list[VisSample]]:
    head = make_dpt_head("segmentation", model, cfg, spec, train.info.num_classes)

    def loss(head, levels, idx, step):
        seg = train_cache.targets("seg", idx).to(head_device(head))
        return F.cross_entropy(head(levels, size=seg.shape[-2:]), seg, ignore_index=IGNORE_INDEX)

    head = train_dpt(head, train_cache, cfg, loss)
    K = val.info.num_classes
    conf, vis = torch.zeros(K, K, dtype=torch.int64), []
    subset = class_subset(cfg, val.info.class_names, val.info.object_classes)
    for i, raw in _predictions(head, val_cache, cfg.extract_batch_size):
        gt = val.load_seg(i)
        pred = head.outputs(raw.to(head_device(head)), tuple(gt.shape))[0].argmax(0).cpu()
        conf += confusion_matrix(pred, gt, K)
        if len(vis) < cfg.num_vis:
            vis.append(VisSample(val.keys[i], np.asarray(val.load_image(i)), gt.numpy(), pred.numpy(),
                                 _vis_features(val_cache, i)))
    return head, segmentation_metrics(conf, val.info.class_names, subset), vis


def _depth(model, train, val, cfg, spec, train_cache, val_cache) -> tuple[DenseHead, dict, list[VisSample]]:
    if cfg.depth.spacing != "uniform":
        raise ValueError("DPT depth heads place their bins uniformly (linspace); set depth.spacing=uniform")
    lo, hi = depth_range(cfg, val.info)
    head = make_dpt_head("depth", model, cfg, spec, cfg.depth.bins, min_depth=lo, max_depth=hi)
    objective = DepthObjective(lo, hi, cfg.depth.grad_loss_weight, cfg.depth.sig_warmup)

    def loss(head, levels, idx, step):
        depth = train_cache.targets("depth", idx).to(head_device(head))
        return objective(head(levels, size=depth.shape[-2:]), depth, step)

    head = train_dpt(head, train_cache, cfg, loss)
    ev = _Evaluator(val, cfg, lo, hi)
    for i, raw in _predictions(head, val_cache, cfg.extract_batch_size):
        size = tuple(val.load_depth(i).shape)
        ev.add(i, head.outputs(raw.to(head_device(head)), size).cpu(), _vis_features(val_cache, i))  # at GT size
    return head, ev.metrics(), ev.vis


def _normals(model, train, val, cfg, spec, train_cache, val_cache) -> tuple[DenseHead, dict, list[VisSample]]:
    head = make_dpt_head("normals", model, cfg, spec, out_channels(cfg))
    objective = NormalsObjective(cfg.normals.loss, head.cfg.upsample_mode)

    def loss(head, levels, idx, step):
        return objective(head.decode(levels), train_cache.targets("normals", idx).to(head_device(head)))

    head = train_dpt(head, train_cache, cfg, loss)
    everything, objects, vis = NormalMetrics(), None, []
    if cfg.normals.mask == "objects":
        objects, object_ids = NormalMetrics(), torch.tensor(val.info.object_classes)
    for i, raw in _predictions(head, val_cache, cfg.extract_batch_size):
        gt = val.load_normals(i)
        pred = head.outputs(raw.to(head_device(head)), tuple(gt.shape[-2:]))[0].cpu()  # resized, L2-normalised
        everything.update(pred, gt)
        if objects is not None:
            objects.update(pred, gt, torch.isin(val.load_seg(i), object_ids))
        if len(vis) < cfg.num_vis:
            vis.append(VisSample(val.keys[i], np.asarray(val.load_image(i)), normals_picture(gt.numpy()),
                                 normals_picture(pred.numpy()), _vis_features(val_cache, i)))
    metrics = {"all": everything.compute()}
    if objects is not None:
        metrics["objects"] = objects.compute()
    return head, metrics, vis


def run_dpt(
    model: tips.TIPS, train: DenseDataset, val: DenseDataset, cfg: ProbeConfig, spec: FeatureSpec, cache_fn,
) -> ProbeOutcome:
    """Train and evaluate a DPT probe for ``cfg.task`` on cached four-block features."""
    if len(spec.layers) != 4 or not spec.cls:
        raise ValueError(f"a DPT head reads 4 blocks with CLS1; features.layers gives {list(spec.layers)}, "
                         f"features.cls={spec.cls} (leave the dpt preset's features.layers=dpt, features.cls=true)")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    train_cache, val_cache = cache_fn(train, spec), cache_fn(val, spec)
    timings["features_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    task_fn = {"segmentation": _segmentation, "depth": _depth, "normals": _normals}[cfg.task]
    head, metrics, vis = task_fn(model, train, val, cfg, spec, train_cache, val_cache)
    timings["train_and_eval_s"] = time.perf_counter() - t1
    protocol = {"head": "dpt", "dpt_preset": cfg.dpt.preset, "fusion": head.cfg.fusion_width,
                "upsample_to_gt": head.cfg.upsample_mode, "dpt_layers": list(spec.layers)}
    if cfg.task == "depth":
        lo, hi = depth_range(cfg, val.info)
        protocol.update(depth_range=[lo, hi], bins=cfg.depth.bins, spacing="uniform", flip_tta=False,
                        eigen_crop=metrics["eigen_crop"], mask=cfg.depth.mask)
    elif cfg.task == "normals":
        protocol.update(loss=cfg.normals.loss, mask=cfg.normals.mask)
    else:
        subset = class_subset(cfg, val.info.class_names, val.info.object_classes)
        protocol["subset_classes"] = None if subset is None else [val.info.class_names[i] for i in subset]
    return ProbeOutcome(metrics, vis, timings, protocol, head=head)
