"""The pictures ``tips-demo`` draws: what pretraining measurably bought (the README's picture), and the dense
probes' panels side by side (``dense.png``, read in docs/demo.md).

The first picture shows the two rows of the table where the trained tower beats the random one beyond the noise:
text→image retrieval (a few caption queries, evenly spaced over the captions rather than chosen by outcome, with
each model's top five images and the caption's own image framed) and depth on object pixels (the linear probe's
prediction and its error where the objects are).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tips.inference.pictures import DEPTH_COLORMAP, depth_limits
from tips.io import decode_image
from tips.models import to_rgb

LABELS = {"trained": "TIPS demo checkpoint", "random": "random init (same architecture)"}
HIT = "#1a9e3a"  # the frame of the caption's own image
TOP_K = 5


def _read_rgb(path: str | Path) -> np.ndarray:
    return np.asarray(to_rgb(decode_image(Path(path).read_bytes(), max_pixels=None), in_place=True))


def benefit_page(examples: dict[str, Sequence[dict]], depth: dict[str, Sequence[dict]],
                 object_rmse: dict[str, dict[str, float]], rows: dict[str, dict], out: Path, steps: int) -> Path:
    """One PNG: text→image queries (each model's top five images) and depth, trained beside random: a few
    predictions, and every validation image's object-pixel RMSE of one model against the other.

    examples: per model label, the retrieval probe's ``examples`` (same queries for both, as
    :func:`tips_eval.retrieval.retrieval_examples` records them); depth: per label, the depth probe's samples
    (:func:`tips_eval.report.load_samples`: image (H, W, 3), target and pred (H, W) metres, same keys for both);
    object_rmse: per label, the depth probe's per-image object-pixel RMSE by image key; rows: the demo table
    (:func:`tips_eval.demo_report.summarise`), whose numbers the section titles quote.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    queries = list(zip(examples["trained"], examples["random"]))
    samples = list(zip(depth["trained"], depth["random"]))
    q_h, d_h = 1.75, 1.9  # inches per query block / per depth row
    height = 1.0 + 0.8 + q_h * len(queries) + 0.75 + d_h * len(samples) + 0.3
    fig = plt.figure(figsize=(13, height))
    y = 1 - 0.35 / height
    t2i, depth_row = rows["text_to_image_r1"], rows["object_depth_rmse"]
    fig.suptitle(f"tips-demo: a tiny TIPS pretrained for {steps} steps on CPU-rendered scenes, beside a random tower",
                 y=y, fontsize=13, fontweight="bold")
    y -= 0.55 / height
    fig.text(0.01, y, f"Text → image retrieval on held-out scenes (synthetic captions): R@1 {t2i['trained']:.1f} % "
                      f"trained vs {t2i['random']:.1f} % random. Top {TOP_K} per query; green frame = the caption's "
                      "own image.", fontsize=10, va="bottom")
    top = y - 0.1 / height
    bottom = top - (q_h * len(queries) + 0.25) / height
    grid = fig.add_gridspec(1 + 2 * len(queries), 2 * TOP_K + 1, top=top, bottom=bottom, left=0.01, right=0.99,
                            height_ratios=[0.2] + [0.45, 1.0] * len(queries),
                            width_ratios=[1] * TOP_K + [0.25] + [1] * TOP_K, hspace=0.05, wspace=0.05)
    for side, label in enumerate(("trained", "random")):
        head = fig.add_subplot(grid[0, side * (TOP_K + 1): side * (TOP_K + 1) + TOP_K])
        head.axis("off")
        head.text(0.5, 0.5, f"{LABELS[label]}: top {TOP_K}", ha="center", va="center", fontsize=10, fontweight="bold")
    for q, (trained, random) in enumerate(queries):
        text_ax = fig.add_subplot(grid[1 + 2 * q, :])
        text_ax.axis("off")
        caption = textwrap.shorten(trained["caption_text"], 150, placeholder=" …")
        text_ax.text(0, 0.15, f"“{caption}”   own image ranked {trained['rank'] + 1} (trained), "
                              f"{random['rank'] + 1} (random)", fontsize=9, va="bottom")
        for side, example in enumerate((trained, random)):
            for k, path in enumerate(example["top_paths"][:TOP_K]):
                ax = fig.add_subplot(grid[2 + 2 * q, side * (TOP_K + 1) + k])
                ax.imshow(_read_rgb(path))
                ax.set_xticks([])
                ax.set_yticks([])
                hit = path == example["target_path"]
                for spine in ax.spines.values():
                    spine.set_edgecolor(HIT if hit else "#bbbbbb")
                    spine.set_linewidth(4 if hit else 0.8)
    y = bottom - 0.6 / height
    fig.text(0.01, y, f"Depth from a linear probe on frozen patch features: object-pixel RMSE "
                      f"{depth_row['trained']:.2f} m trained vs {depth_row['random']:.2f} m random (mean over "
                      "images; right: every image).", fontsize=10, va="bottom")
    top = y - 0.25 / height
    _depth_rows(fig, samples, top, 0.3 / height)
    _rmse_scatter(fig, object_rmse, top, 0.3 / height)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _depth_rows(fig, samples: list[tuple[dict, dict]], top: float, bottom: float) -> None:
    """Rows = samples; columns = input | ground truth | trained | random, one depth colour scale."""
    import matplotlib

    grid = fig.add_gridspec(len(samples), 4, top=top, bottom=bottom, left=0.01, right=0.5, hspace=0.12, wspace=0.05)
    near, far = depth_limits(np.concatenate([t["target"].ravel() for t, _ in samples]))
    cmap = matplotlib.colormaps[DEPTH_COLORMAP].with_extremes(bad=(0.6, 0.6, 0.6))
    depth_im = None
    for r, (trained, random) in enumerate(samples):
        gt = np.ma.masked_where(trained["target"] <= 0, trained["target"])
        panels = [("input", trained["image"], {}), ("ground truth", gt, {"cmap": cmap, "vmin": near, "vmax": far}),
                  ("trained", trained["pred"], {"cmap": cmap, "vmin": near, "vmax": far}),
                  ("random", random["pred"], {"cmap": cmap, "vmin": near, "vmax": far})]
        for c, (title, array, kw) in enumerate(panels):
            ax = fig.add_subplot(grid[r, c])
            im = ax.imshow(array, **kw)
            depth_im = im if kw else depth_im
            ax.set_title(title if r == 0 else "", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    span = top - bottom
    fig.colorbar(depth_im, cax=fig.add_axes((0.51, bottom + 0.1 * span, 0.01, 0.8 * span)),
                 label="depth (m); bright = near; clipped at the 1st-99th pct of the ground truth")


def _rmse_scatter(fig, object_rmse: dict[str, dict[str, float]], top: float, bottom: float) -> None:
    """Each validation image's object-pixel RMSE: random tower (x) against trained (y); below the diagonal =
    pretraining helped on that image."""
    keys = sorted(set(object_rmse["trained"]) & set(object_rmse["random"]))
    x = np.array([object_rmse["random"][k] for k in keys])
    y = np.array([object_rmse["trained"][k] for k in keys])
    span = top - bottom
    ax = fig.add_axes((0.64, bottom + 0.08 * span, 0.33, 0.84 * span))
    ax.scatter(x, y, s=14, color="#1f5fa8", alpha=0.75)
    hi = float(max(x.max(initial=1.0), y.max(initial=1.0))) * 1.05
    ax.plot([0, hi], [0, hi], color="grey", linewidth=1, linestyle="--")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("random init: object-pixel RMSE (m)", fontsize=9)
    ax.set_ylabel("trained: object-pixel RMSE (m)", fontsize=9)
    better = int((y < x).sum())
    ax.set_title(f"per image: trained lower on {better} of {len(keys)} (below the diagonal)", fontsize=9)


def dense_page(pictures: dict[tuple[str, str], Path], out: Path) -> Path:
    """One PNG: a row per dense task (``(task, label)`` keys), the trained model's probe picture beside the
    random tower's, each labelled."""
    tasks = list(dict.fromkeys(task for task, _ in pictures))
    labels = ("trained", "random")
    images = {k: to_rgb(decode_image(Path(v).read_bytes(), max_pixels=None), in_place=True) for k, v in pictures.items()}
    col_w = max(im.width for im in images.values())
    row_h = {t: max(images[(t, lb)].height for lb in labels if (t, lb) in images) for t in tasks}
    header = 40
    page = Image.new("RGB", (2 * col_w, sum(row_h[t] + header for t in tasks)), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=22)
    y = 0
    for t in tasks:
        for c, lb in enumerate(labels):
            draw.text((c * col_w + 8, y + 8), f"{t}: {LABELS[lb]}", fill="black", font=font)
            if (t, lb) in images:
                page.paste(images[(t, lb)], (c * col_w, y + header))
        y += row_h[t] + header
    page.save(out)
    return out
