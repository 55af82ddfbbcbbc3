"""Results of a probe run: one JSON file, a markdown table (printed and saved) and a picture.

The picture shows, for a few validation images, the input, the ground truth, the prediction and the PCA of the
patch features (:func:`tips.pca_rgb`: first three components as RGB, fitted jointly over the shown images).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # the probes import this module to write their results
    from .probes.common import VisSample

# Fixed palette: the same class id gets the same colour in every picture of every run.
_BASE_PALETTE = np.array([
    (135, 206, 235), (120, 110, 90), (220, 40, 40), (40, 90, 220), (40, 170, 60), (250, 180, 20),
    (160, 60, 200), (0, 190, 190), (240, 120, 180), (130, 80, 20), (128, 128, 0), (0, 0, 128),
    (255, 127, 80), (70, 130, 180), (154, 205, 50), (199, 21, 133), (112, 128, 144), (255, 215, 0),
    (0, 100, 0), (178, 34, 34),
], dtype=np.uint8)
IGNORE_COLOUR = np.array((0, 0, 0), dtype=np.uint8)


def palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours: 20 fixed ones, then deterministic pseudo-random colours."""
    extra = np.random.default_rng(0).integers(0, 256, size=(max(0, num_classes - len(_BASE_PALETTE)), 3))
    return np.concatenate([_BASE_PALETTE, extra.astype(np.uint8)])[:num_classes]


def colourize(seg: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(H, W) class ids (255 = ignore) → (H, W, 3) uint8."""
    out = np.empty((*seg.shape, 3), dtype=np.uint8)
    known = seg < len(colours)
    out[known] = colours[seg[known]]
    out[~known] = IGNORE_COLOUR
    return out


def pca_maps(features: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per image (h, w, C) features → (h, w, 3) in [0, 1]: :func:`tips.pca_rgb`, the colours ``tips-extract --pca``
    draws for the same features."""
    import torch

    from tips import pca_rgb

    return [m.numpy() for m in pca_rgb([torch.as_tensor(np.asarray(f, dtype=np.float32)) for f in features])]


INVALID_GREY = (0.6, 0.6, 0.6)  # pixels without ground truth in depth and normals pictures


def depth_scale(vis: list[VisSample], depth_range: tuple[float, float] | None = None) -> tuple[float, float]:
    """(near, far) of the depth colour scale shared by every panel: the 1st-99th percentile of the valid ground
    truth (the rule of ``tips-predict``'s pictures, :func:`tips.inference.pictures.depth_limits`)."""
    from tips.inference.pictures import depth_limits

    valid = np.concatenate([v.target[v.target > 0].ravel() for v in vis]) if vis else np.zeros(0)
    return depth_limits(valid) if valid.size else (depth_range or (0.0, 1.0))


def legend_items(task: str, vis: list[VisSample], class_names: list[str] | None = None) -> list[tuple[str, tuple]]:
    """(label, RGB in [0, 1]) for every flat colour the picture draws: the classes present (and black "ignored"
    pixels) for segmentation, grey "no ground truth" for depth and normals when any pixel has none."""
    if task == "segmentation":
        names = class_names or []
        colours = palette(len(names))
        ids = sorted({int(c) for v in vis for c in np.unique(np.concatenate([v.target.ravel(), v.pred.ravel()]))})
        items = [(names[c], tuple(colours[c] / 255.0)) for c in ids if c < len(names)]
        if any(c >= len(names) for c in ids):
            items.append(("ignored / no label", tuple(IGNORE_COLOUR / 255.0)))
        return items
    invalid = any((v.target <= 0).any() if task == "depth" else (np.abs(v.target - INVALID_GREY[0]) < 1e-6).all(-1).any()
                  for v in vis)
    return [("no ground truth", INVALID_GREY)] if invalid else []


def save_picture(
    vis: list[VisSample], path: Path, task: str, class_names: list[str] | None = None,
    depth_range: tuple[float, float] | None = None, title: str = "", random: bool = False,
) -> Path:
    """Rows = images; columns = input | ground truth | prediction | PCA of patch features. Every flat colour has a
    legend entry (:func:`legend_items`); depth uses ``tips-predict``'s colour map and clipping and says so; normals
    get a key sphere; ``random`` puts a red "random weights" banner on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from tips.inference.pictures import DEPTH_COLORMAP, RANDOM_MARK, RANDOM_MARK_COLOUR, normals_key

    rows = max(1, len(vis))
    height = 3 * rows + 1.2
    fig, axes = plt.subplots(rows, 4, figsize=(12, height), squeeze=False)
    fig.subplots_adjust(top=1 - 0.8 / height, bottom=0.6 / height, hspace=0.08, wspace=0.05)
    pcas = pca_maps([v.features for v in vis]) if vis else []
    if task == "segmentation":
        colours = palette(len(class_names or []))
    elif task == "depth":
        vmin, vmax = depth_scale(vis, depth_range)
        cmap = matplotlib.colormaps[DEPTH_COLORMAP].with_extremes(bad=INVALID_GREY)
    for r, v in enumerate(vis):
        axes[r, 0].imshow(v.image)
        axes[r, 0].set_ylabel(v.key, fontsize=8)
        if task == "segmentation":
            axes[r, 1].imshow(colourize(v.target, colours))
            axes[r, 2].imshow(colourize(v.pred, colours))
        elif task == "normals":  # (H, W, 3) RGB = (n + 1) / 2, grey = no ground truth
            axes[r, 1].imshow(v.target)
            axes[r, 2].imshow(v.pred)
        else:
            axes[r, 1].imshow(np.ma.masked_where(v.target <= 0, v.target), cmap=cmap, vmin=vmin, vmax=vmax)
            im = axes[r, 2].imshow(v.pred, cmap=cmap, vmin=vmin, vmax=vmax)
        axes[r, 3].imshow(pcas[r], interpolation="nearest")
    for c, name in enumerate(("input", "ground truth", "prediction", "PCA of patch features")):
        axes[0, c].set_title(name, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(facecolor=rgb, edgecolor="black", linewidth=0.5, label=label)
               for label, rgb in legend_items(task, vis, class_names)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8)
    if task == "depth" and vis:
        fig.subplots_adjust(right=0.9)
        fig.colorbar(im, cax=fig.add_axes((0.92, 0.2, 0.015, 0.6)),
                     label="depth (m), one scale for all panels; bright = near, dark = far; clipped at the 1st-99th "
                           "percentile of the ground truth")
    elif task == "normals" and vis:
        fig.subplots_adjust(right=0.9)
        key = fig.add_axes((0.915, 0.45, 0.08, 0.08 * 12 / height))
        key.imshow(normals_key(96))
        key.set_title("normals key", fontsize=8)
        key.axis("off")
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.45 / height)
    if random:
        fig.text(0.01, 1 - 0.05 / height, RANDOM_MARK, fontsize=12, color="white", va="top", fontweight="bold",
                 bbox=dict(facecolor=tuple(c / 255 for c in RANDOM_MARK_COLOUR), edgecolor="none", pad=6))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def markdown(result: dict) -> str:
    """The result as markdown: a header table of the protocol and the metrics table of its task."""
    ds, feats = result["dataset"], result["features"]
    lines = [
        f"### {result['task']} probe — {ds['name']} ({result['protocol']} protocol)",
        "",
        "| checkpoint | dataset (train → val) | resolution | layers | norm | CLS | iterations | seed |",
        "|---|---|---|---|---|---|---|---|",
        f"| {result['checkpoint']['label']} ({identity_tag(_identity(result['checkpoint']))}) | {ds['name']} {ds['train_split']} ({ds['num_train']}) → {ds['val_split']} "
        f"({ds['num_val']}) | {'x'.join(map(str, feats['resolution']))} | {','.join(map(str, feats['layers']))} | "
        f"{feats['norm']} | {feats['cls']} | {result['config']['optim']['iterations']} | {result['seed']} |",
        "",
    ]
    m = result["metrics"]
    if result["task"] == "segmentation":
        subset = result["details"].get("subset_classes")
        lines += ["| mIoU | " + (f"mIoU ({', '.join(subset)}) | " if subset else "") + "pixel accuracy | classes |",
                  "|---" * (4 if subset else 3) + "|",
                  f"| {_fmt(m['miou'])} | " + (f"{_fmt(m['miou_subset'])} | " if subset else "")
                  + f"{_fmt(m['pixel_accuracy'])} | {m['classes_counted']} |", "",
                  "| class | IoU |", "|---|---|"]
        lines += [f"| {name} | {_fmt(v)} |" for name, v in m["per_class_iou"].items()]
    elif result["task"] == "normals":
        d = result["details"]
        lines.append(f"Normals {d['head']}, {d['loss']} loss, prediction resized {d['upsample_to_gt']} to the ground "
                     "truth; angular error (degrees) per image over valid pixels, averaged over images.")
        columns = {"mean": "mean", "median": "median", "rmse": "RMSE", "pct_11.25": "% < 11.25°",
                   "pct_22.5": "% < 22.5°", "pct_30": "% < 30°"}
        lines += ["", "| pixels | " + " | ".join(columns.values()) + " | images |", "|---" * (len(columns) + 2) + "|"]
        for name in ("all", "objects"):
            if name in m and m[name].get("images"):
                lines.append(f"| {name} | " + " | ".join(_fmt(m[name][k]) for k in columns) + f" | {m[name]['images']} |")
    else:
        d = result["details"]
        lines.append(f"Depth {d['head']}, {d['bins']} {d['spacing']} bins on [{d['depth_range'][0]}, "
                     f"{d['depth_range'][1]}] m, Eigen crop {d['eigen_crop']}, flip TTA {d['flip_tta']}; "
                     "metrics per image, averaged over images.")
        columns = {"rmse": "RMSE", "abs_rel": "AbsRel", "log10": "log10", "d1": "δ1", "d2": "δ2", "d3": "δ3",
                   "rmse_aligned": "RMSE (scale+shift aligned)", "bias": "bias (m)"}
        lines += ["", "| pixels | " + " | ".join(columns.values()) + " | images |", "|---" * (len(columns) + 2) + "|"]
        for name in ("all", "objects"):
            if name in m and m[name].get("images"):
                r = m[name]
                # .get: results written before "bias" existed have no such key, and _fmt shows None as "–"
                lines.append(f"| {name} | " + " | ".join(_fmt(r.get(k)) for k in columns) + f" | {r['images']} |")
    t = result["timings"]
    lines += ["", "time: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in t.items()) + f" ({result['time']})"]
    return "\n".join(lines) + "\n"


def identity_tag(identity: dict | None) -> str:
    """8 hex digits of the checkpoint's identity (``tips_eval.features.checkpoint_identity``): two checkpoints
    with the same label (``runs/a/final``, ``runs/b/final``) never share a result file."""
    return hashlib.sha256(json.dumps(identity or {}, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_name(task: str, dataset: str, protocol: str, checkpoint_label: str, seed: int,
             identity: dict | None = None) -> str:
    """``{task}-{dataset}-{protocol}-{label}-{identity tag}-s{seed}``: the label for people, the tag so that two
    checkpoints never write the same file."""
    tag = re.sub(r"[^A-Za-z0-9._-]+", "-", checkpoint_label).strip("-") or "model"
    return f"{task}-{dataset}-{protocol}-{tag}-{identity_tag(identity)}-s{seed}"


def _identity(checkpoint: dict) -> dict:
    """The identity part of a result's ``checkpoint`` (which also holds the label)."""
    return {k: v for k, v in checkpoint.items() if k != "label"}


def save_samples(vis: list[VisSample], path: Path) -> Path:
    """The pictured samples as plain arrays (no pickle: ``numpy.load(allow_pickle=False)`` reads them), so that
    other pictures can be drawn from the same predictions: ``keys`` (N,) str, and per sample i ``image/i`` (H, W, 3)
    uint8, ``target/i`` and ``pred/i`` (H, W) (or (H, W, 3) for normals)."""
    arrays = {"keys": np.array([v.key for v in vis], dtype=str)}
    for i, v in enumerate(vis):
        arrays |= {f"image/{i}": v.image, f"target/{i}": v.target, f"pred/{i}": v.pred}
    np.savez_compressed(path, **arrays)
    return path


def load_samples(path: str | Path) -> list[dict[str, np.ndarray | str]]:
    """What :func:`save_samples` wrote: one ``{"key", "image", "target", "pred"}`` per sample."""
    with np.load(path, allow_pickle=False) as z:
        return [{"key": str(key), **{name: z[f"{name}/{i}"] for name in ("image", "target", "pred")}}
                for i, key in enumerate(z["keys"])]


def write_report(result: dict, vis: list[VisSample], out_dir: str | Path, name: str,
                 class_names: list[str] | None = None, depth_range: tuple[float, float] | None = None) -> dict[str, Path]:
    """Write ``{name}.json``, ``{name}.md``, ``{name}.png`` and the pictured samples' arrays ``{name}-samples.npz``
    (:func:`save_samples`) into ``out_dir``; returns their paths, which the JSON records too (``result["paths"]``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "markdown": out / f"{name}.md", "picture": out / f"{name}.png",
             "samples": out / f"{name}-samples.npz"}
    save_samples(vis, paths["samples"])
    result["paths"] = {k: str(v) for k, v in paths.items()}
    paths["json"].write_text(json.dumps(_finite(result), indent=2, default=_json_default, allow_nan=False) + "\n")
    paths["markdown"].write_text(markdown(result))
    save_picture(vis, paths["picture"], result["task"], class_names, depth_range,
                 title=f"{result['task']} — {result['dataset']['name']} — {result['checkpoint']['label']}",
                 random=result["checkpoint"].get("kind") == "random-init")
    return paths


def _finite(x):
    """NaN (e.g. the mIoU of an empty subset) → None, so the JSON stays standard."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")
