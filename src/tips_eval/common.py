"""Pieces the global tasks share: their command-line flags, batched image / text encoding, CLS choice,
ranking helpers and result writing."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import tips
from tips.cli.errors import add_debug_arg, renamed
from tips.inference import encoding
from tips.inference.encoding import ImageProgress
from tips.cli.model_args import add_model_args, add_output_arg, model_from_args
from tips.inference.loaded import resolve_device
from tips.io import write_text_atomic

from .options import add_config_args
from .templates import render

CLS_CHOICES = ("alt", "syn", "mean")
Cls = Literal["alt", "syn", "mean"]
Dtype = Literal["float32", "bfloat16", "float16"]  # tips.models.dtypes.DTYPES (a test keeps them equal)
Quantize = Literal["int8"]  # tips.inference.quantize.MODES


@dataclass
class GlobalTaskOptions:
    """The options every global task shares (the flags of :func:`add_global_task_args`); each task's schema adds
    its own. ``--config`` keys and ``key=value`` overrides are these field names."""

    model: Optional[str] = None
    random_init: Optional[str] = None
    text: Optional[str] = None
    tokenizer: Optional[str] = None
    seed: int = 0
    dtype: Dtype = "float32"
    quantize: Optional[Quantize] = None
    cls: Cls = "alt"
    resolution: Optional[int] = None  # square input side; None = the model's native one
    batch_size: int = 64
    num_workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    device: str = "auto"  # decided at run time: CUDA when available, else the CPU
    out: Optional[Path] = None
    no_progress: bool = False


# ----------------------------------------------------------------------------- model
def add_global_task_args(parser: argparse.ArgumentParser) -> None:
    """Flags every global task shares: which model (:func:`tips.cli.model_args.add_model_args`), how to feed it, where
    results go, and ``--config`` + ``key=value`` overrides (:mod:`tips_eval.options`). The defaults live in
    :class:`GlobalTaskOptions`; the flags' ``default=`` only shows in ``--help``."""
    add_model_args(parser)
    run = parser.add_argument_group("run")
    run.add_argument("--cls", choices=CLS_CHOICES, default="alt",
                     help="image embedding: CLS1 (alt, default), CLS2 (syn) or the mean of both normalised")
    run.add_argument("--resolution", type=int, default=None, help="square input side (default: the model's native one)")
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1), help="data-loading processes")
    renamed(run, "--workers", "--num-workers")
    run.add_argument("--device", default="auto", help="auto (CUDA when available, else the CPU), cpu, cuda, cuda:1 …")
    add_output_arg(run, "folder for the JSON result and the markdown table (default: print the table only)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_arg(run)
    add_config_args(parser)


def load_model(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """The model the flags name, in eval mode on ``args.device``, and a record of where it came from."""
    args.device = str(resolve_device(args.device))  # decided now, and recorded as decided
    torch.manual_seed(args.seed)
    loaded = model_from_args(args)
    return tips.prepare_for_inference(loaded.model, args.device, getattr(args, "quantize", None),
                                      getattr(args, "dtype", None)), loaded.record


def precision(model: nn.Module, args: argparse.Namespace):
    """The autocast context of ``--dtype`` on the model's device (a no-op at float32)."""
    return tips.autocast(model, getattr(args, "dtype", "float32"))


def image_transform(model: nn.Module, resolution: int | None) -> Callable[[Image.Image], torch.Tensor]:
    """The model's preprocessing, or the same at a chosen square resolution."""
    if resolution is None:
        return model.preprocess
    return tips.Preprocess(resolution, model.vision.patch_size)


def transform_size(transform: Callable) -> int | None:
    return getattr(transform, "size", None)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------- encoding
def encode_images(model: nn.Module, dataset: Dataset, batch_size: int = 64, workers: int = 0,
                  progress: bool = True, desc: str = "images") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Encode a dataset of (image (3, H, W), label) → ({"alt": (N, D), "syn": (N, D)} raw CLS on CPU, labels (N,)),
    through the library's one encoding loop (:func:`tips.inference.encode_images`)."""
    device = model_device(model)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                        pin_memory=device.type == "cuda")
    alt, syn, labels = [], [], []
    with ImageProgress(len(dataset), progress, desc, leave=False) as bar:
        for feats, y in encoding.encode_images(model, loader, bar):
            alt.append(feats.cls_alt.float().cpu())
            syn.append(feats.cls_syn.float().cpu())
            labels.append(torch.as_tensor(y))
    return {"alt": torch.cat(alt), "syn": torch.cat(syn)}, torch.cat(labels)


def select_cls(feats: dict[str, torch.Tensor], cls: str) -> torch.Tensor:
    """(N, D) L2-normalised image embedding: CLS1 ("alt"), CLS2 ("syn"), or normalised sum of both ("mean")."""
    if cls == "alt":
        return tips.l2_normalize(feats["alt"])
    if cls == "syn":
        return tips.l2_normalize(feats["syn"])
    if cls == "mean":
        return tips.l2_normalize(tips.l2_normalize(feats["alt"]) + tips.l2_normalize(feats["syn"]))
    raise ValueError(f"cls must be one of {CLS_CHOICES}, got {cls!r}")


def temperature_for(model: nn.Module, cls: str) -> float:
    """τ dividing the cosine for this CLS: the stored one (CLS1's for "mean"), 1 when the checkpoint has none."""
    tau = model.temperature_syn if cls == "syn" else model.temperature
    return float(tau) if tau is not None else 1.0


@torch.no_grad()
def encode_texts(model: nn.Module, texts: Sequence[str], batch_size: int = 256, progress: bool = True,
                 desc: str = "texts") -> torch.Tensor:
    """List of strings → (N, D) L2-normalised text embeddings on CPU."""
    out = []
    for i in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, leave=False):
        out.append(tips.l2_normalize(model.encode_text(list(texts[i:i + batch_size])).float()).cpu())
    return torch.cat(out)


def class_embeddings(model: nn.Module, class_names: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """(C, D): per class, mean of the normalised embeddings of its prompts over the templates, re-normalised."""
    prompts = [render(t, name) for name in class_names for t in templates]
    emb = encode_texts(model, prompts, batch_size, progress, desc="class prompts")
    return tips.l2_normalize(emb.reshape(len(class_names), len(templates), -1).mean(dim=1))


# ----------------------------------------------------------------------------- ranking
def rank_of_target(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, C) scores, (N,) target columns → (N,) 0-based rank: how many other columns score at least as high.

    Ties count against the target, so a collapsed model (all scores equal) never looks perfect.
    """
    target_score = scores.gather(1, targets[:, None])
    return (scores >= target_score).sum(dim=1) - 1


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in % for each k (capped at the number of classes)."""
    rank = rank_of_target(scores, targets)
    return {f"top{k}": 100.0 * (rank < k).float().mean().item() for k in ks}


# ----------------------------------------------------------------------------- results
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(out: Path | None, task: str, result: dict[str, Any], table: str) -> dict[str, Path]:
    """Print the table; with ``out`` also write ``{out}/{task}.json`` and ``{out}/{task}.md`` and append the run to
    ``{out}/results.jsonl`` (:mod:`tips_eval.compare`)."""
    from .compare import global_records, log_records

    print(table)
    if out is None:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{task}.json", "markdown": out / f"{task}.md"}
    write_text_atomic(paths["json"], json.dumps(result, indent=2) + "\n")
    write_text_atomic(paths["markdown"], f"# {task}\n\n" + table)
    paths["log"] = log_records(out, global_records(result, paths["json"]))
    print(f"wrote {paths['json']} and {paths['markdown']}; added the run to {paths['log']}")
    return paths


def base_protocol(task: str, args: argparse.Namespace, checkpoint: dict[str, Any], resolution: int | None) -> dict[str, Any]:
    """What every global-task result records about how it was measured; ``model`` is the label and identity tag
    that ``tips-probe compare`` shows (as in the dense probes' result names)."""
    from .features import model_identity
    from .report import identity_tag

    identity, label = model_identity(getattr(args, "model", None), getattr(args, "random_init", None),
                                     getattr(args, "seed", 0), getattr(args, "quantize", None),
                                     getattr(args, "dtype", "float32"))
    return {
        "task": task,
        "model": {"label": label, "id": identity_tag(identity)},
        "cls": args.cls,
        "resolution": resolution,
        "checkpoint": checkpoint,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "device": str(args.device),
        "tips_version": tips.__version__,
    }
