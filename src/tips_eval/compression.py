"""``tips-probe compression``: quality of one checkpoint under compression, as EmbeddingGemma reports it.

For each precision (``--precisions fp32,bf16,int8``: autocast bf16, ``tips.quantize`` int8) it measures the
global tasks given: retrieval R@1 (``--retrieval``, both directions), kNN top-1 (``--knn-train`` +
``--knn-val``), zero-shot top-1 (``--zero-shot``), at every embedding width of ``--dims`` (default D, D/2, D/4,
D/8: the first d features of the CLS / text embedding, re-normalised), and the linear dense probes
(``--dense KIND:PATH``, ``--dense-tasks segmentation,depth``, fast protocol) at full width. Writes
``compression.json``, ``compression.md`` (one table) and ``compression.png`` (metric against width, one line per
precision) into ``--out``.

    tips-probe compression --model runs/scenes/final --retrieval /data/scenes/probe --zero-shot DIR \\
        --knn-train DIR/train --knn-val DIR/val --dense scenes:/data/scenes/probe --out results/compression

Zero-shot class embeddings are averaged over templates at full width and truncated afterwards.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

import tips

from . import common
from .options import TaskParser, examples, parse_task_args
from .global_data import read_caption_pairs, read_image_folder
from .knn import knn_votes
from .retrieval import default_caption_field, recall_metrics, retrieval_ranks
from .templates import get_templates

PRECISIONS = {"fp32": ("float32", None), "bf16": ("bfloat16", None), "int8": ("float32", "int8")}


def default_dims(width: int) -> list[int]:
    return [width // f for f in (1, 2, 4, 8) if width // f >= 1]


def truncate(emb: torch.Tensor, d: int) -> torch.Tensor:
    """(N, D) → the first d features, L2-normalised (N, d)."""
    return tips.l2_normalize(emb[:, :d])


def global_metrics(model: tips.TIPS, args: argparse.Namespace, dims: Sequence[int]) -> dict[int, dict[str, float]]:
    """{width: {metric: value}} for every global task the flags give; features encoded once per task."""
    progress = not args.no_progress
    transform = common.image_transform(model, args.resolution)
    out: dict[int, dict[str, float]] = {d: {} for d in dims}
    if args.retrieval:
        # The probe format's caption kind follows the CLS, as in tips-probe retrieval (CLS2 ↔ synthetic captions).
        pairs = read_caption_pairs(args.retrieval, default_caption_field(Path(args.retrieval), args.cls))
        feats, _ = common.encode_images(model, pairs.dataset(transform), args.batch_size, args.num_workers, progress)
        images = common.select_cls(feats, args.cls)
        texts = common.encode_texts(model, pairs.captions, progress=progress)
        for d in dims:
            i2t, t2i = retrieval_ranks(truncate(images, d), truncate(texts, d), torch.as_tensor(pairs.caption_image))
            out[d]["retrieval i2t R@1"] = recall_metrics(i2t)["R@1"]
            out[d]["retrieval t2i R@1"] = recall_metrics(t2i)["R@1"]
    if args.knn_train:
        train = read_image_folder(args.knn_train, find_names=False)
        val = read_image_folder(args.knn_val, folders=train.folders, find_names=False)
        tf, tl = common.encode_images(model, train.dataset(transform), args.batch_size, args.num_workers, progress)
        vf, vl = common.encode_images(model, val.dataset(transform), args.batch_size, args.num_workers, progress)
        tf, vf = common.select_cls(tf, args.cls), common.select_cls(vf, args.cls)
        for d in dims:
            votes = knn_votes(truncate(tf, d), tl, truncate(vf, d), len(train.folders), args.k)
            out[d]["kNN top-1"] = common.topk_accuracy(votes, vl, (1,))["top1"]
    if args.zero_shot:
        data = read_image_folder(args.zero_shot)
        feats, labels = common.encode_images(model, data.dataset(transform), args.batch_size, args.num_workers, progress)
        images = common.select_cls(feats, args.cls)
        classes = common.class_embeddings(model, data.class_names, get_templates(args.templates), progress=progress)
        for d in dims:
            logits = truncate(images, d) @ truncate(classes, d).T
            out[d]["zero-shot top-1"] = common.topk_accuracy(logits, labels, (1,))["top1"]
    return out


def dense_metrics(model: tips.TIPS, args: argparse.Namespace, precision: str, identity: dict) -> dict[str, float]:
    """Scalar metrics of the fast linear probes on ``--dense`` for this precision (full width)."""
    from .probes.config import load_probe_config
    from .probes.run import run_probe

    found: dict[str, float] = {}
    for task in args.dense_tasks.split(","):
        dtype = PRECISIONS[precision][0]
        cfg = load_probe_config(None, args.dense_overrides, task=task, protocol="fast", seed=args.seed,
                                progress=not args.no_progress, **{"features.dtype": dtype})
        result = run_probe(model, args.dense, cfg, None, {**identity, "compression": precision}, precision,
                           args.cache_dir)
        found.update({f"{task} {k}": v for k, v in result["metrics"].items() if isinstance(v, float)})  # not counts
    return found


def markdown(rows: list[dict[str, Any]]) -> str:
    metrics = sorted({k for r in rows for k in r if k not in ("precision", "width")})
    body = [[r["precision"], r["width"], *[r.get(m, "") for m in metrics]] for r in rows]
    return common.markdown_table(["precision", "width", *metrics], body)


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """One panel per global metric: value against width (log scale), one line per precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted({r["width"] for r in rows})
    metrics = sorted({k for r in rows for k in r if k not in ("precision", "width")
                      and sum(1 for q in rows if k in q) > len({q["precision"] for q in rows})})
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4 * max(1, len(metrics)), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for precision in dict.fromkeys(r["precision"] for r in rows):
            pts = sorted((r["width"], r[metric]) for r in rows if r["precision"] == precision and metric in r)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=precision)
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.set_title(metric)
        ax.set_xlabel("embedding width")
    if metrics:
        axes[0][0].legend()
    else:  # one width per precision: no curve to draw, say so instead of an empty panel
        axes[0][0].text(0.5, 0.5, "one width per precision:\nno curve to draw (see the table)", ha="center",
                        va="center", transform=axes[0][0].transAxes)
        axes[0][0].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


EXAMPLES = examples(
    "tips-probe compression --random-init tiny_p8 --retrieval data/scenes/probe/val --resolution 64 "
    "--precisions fp32,int8 -o results",
)


@dataclass
class CompressionOptions(common.GlobalTaskOptions):
    precisions: str = "fp32,bf16,int8"  # comma-separated subset of PRECISIONS
    dims: Optional[str] = None  # comma-separated widths; None = D, D/2, D/4, D/8
    retrieval: Optional[str] = None
    knn_train: Optional[str] = None
    knn_val: Optional[str] = None
    k: int = 20
    zero_shot: Optional[str] = None
    templates: str = "simple"
    dense: Optional[str] = None
    dense_tasks: str = "segmentation,depth"
    dense_overrides: list[str] = field(default_factory=list)
    cache_dir: Optional[str] = None


def build_parser() -> argparse.ArgumentParser:
    p = TaskParser(schema=CompressionOptions, prog="tips-probe compression", description=__doc__.split("\n\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_global_task_args(p)  # its --dtype/--quantize are refused here: --precisions sets them
    p.add_argument("--precisions", default="fp32,bf16,int8", help=f"comma-separated subset of {','.join(PRECISIONS)}")
    p.add_argument("--dims", help="comma-separated embedding widths (default: D, D/2, D/4, D/8)")
    p.add_argument("--retrieval", help="image-caption pairs (as tips-probe retrieval --data)")
    p.add_argument("--knn-train", help="class-per-folder training images for kNN")
    p.add_argument("--knn-val", help="class-per-folder validation images for kNN")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--zero-shot", help="class-per-folder images for zero-shot classification")
    p.add_argument("--templates", default="simple")
    p.add_argument("--dense", help="dataset for the linear dense probes (as tips-probe segmentation --dataset)")
    p.add_argument("--dense-tasks", default="segmentation,depth")
    p.add_argument("--dense-overrides", nargs="*", default=[], help="dotted probe-config overrides")
    p.add_argument("--cache-dir", help="dense feature cache")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_task_args(build_parser(), argv)
    if bool(args.knn_train) != bool(args.knn_val):
        raise SystemExit("tips-probe compression: give both --knn-train and --knn-val")
    if not (args.retrieval or args.knn_train or args.zero_shot or args.dense):
        raise SystemExit("tips-probe compression: give at least one of --retrieval, --knn-train/--knn-val, "
                         "--zero-shot, --dense")
    precisions = args.precisions.split(",")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise SystemExit(f"tips-probe compression: unknown precision {unknown[0]!r}; choose from {list(PRECISIONS)}")
    if args.dtype != "float32" or args.quantize:
        raise SystemExit("tips-probe compression: --dtype/--quantize do not apply here; choose with --precisions")
    base, record = common.load_model(args)
    dims = [int(d) for d in args.dims.split(",")] if args.dims else default_dims(base.width)
    if max(dims) > base.width or min(dims) < 1:
        raise SystemExit(f"tips-probe compression: --dims {dims} must lie in 1..{base.width} (the embedding width)")
    rows: list[dict[str, Any]] = []
    for precision in precisions:
        dtype, quantize = PRECISIONS[precision]
        model = tips.prepare_for_inference(copy.deepcopy(base), args.device, quantize, dtype)
        with tips.autocast(model, dtype):
            per_width = global_metrics(model, args, dims)
        dense = dense_metrics(model, args, precision, record) if args.dense else {}
        for d in dims:
            row = {"precision": precision, "width": d, **per_width[d]}
            if d == base.width:
                row.update(dense)
            rows.append(row)
    table = markdown(rows)
    result = {"checkpoint": record, "dims": dims, "precisions": precisions, "rows": rows,
              "protocol": common.base_protocol("compression", args, record, args.resolution)}
    common.write_results(args.out, "compression", result, table)
    if args.out is not None:
        print(f"wrote {plot(rows, Path(args.out) / 'compression.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
