"""Image↔text retrieval from image–caption pairs (``tips-probe retrieval``): R@1/5/10 both ways, mean and
median rank.

Text→image: each caption's query is correct when its own image is retrieved. Image→text: an image's query is
correct when *any* of its captions is retrieved, so its rank is the number of other images' captions scoring
at least as high as its best caption.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import MISSING

import torch
from torch import nn

from . import common
from .options import TaskParser, examples, parse_task_args
from .global_data import CaptionPairs, read_caption_pairs


def retrieval_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_image: torch.Tensor,
                    chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """image_emb (Ni, D), text_emb (Nt, D) normalised; caption_image (Nt,) image index of each caption
    → 0-based ranks (i2t (Ni,), t2i (Nt,)). Ties count against the query. Similarities are computed in chunks."""
    Ni = image_emb.shape[0]
    if torch.bincount(caption_image, minlength=Ni).min() == 0:
        raise ValueError("every image needs at least one caption")
    t2i = []
    for s in range(0, text_emb.shape[0], chunk):
        sim = text_emb[s:s + chunk] @ image_emb.T  # (chunk, Ni)
        t2i.append(common.rank_of_target(sim, caption_image[s:s + chunk]))
    i2t = []
    for s in range(0, Ni, chunk):
        sim = image_emb[s:s + chunk] @ text_emb.T  # (chunk, Nt)
        own = caption_image[None, :] == torch.arange(s, s + sim.shape[0])[:, None]
        best = sim.masked_fill(~own, float("-inf")).max(dim=1, keepdim=True).values
        i2t.append(((sim >= best) & ~own).sum(dim=1))
    return torch.cat(i2t), torch.cat(t2i)


def retrieval_examples(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_image: torch.Tensor, count: int,
                       k: int = 5) -> list[dict[str, Any]]:
    """``count`` text→image queries, evenly spaced over the captions (not chosen by outcome): for each, the caption's
    index, its own image's index, that image's 0-based rank and the top ``k`` image indices, best first.
    image_emb (Ni, D), text_emb (Nt, D) normalised; caption_image (Nt,)."""
    if count <= 0:
        return []
    queries = torch.linspace(0, text_emb.shape[0] - 1, min(count, text_emb.shape[0])).round().long().unique()
    sim = text_emb[queries] @ image_emb.T  # (count, Ni)
    targets = caption_image[queries]
    ranks = common.rank_of_target(sim, targets)
    top = sim.topk(min(k, image_emb.shape[0]), dim=1).indices
    return [{"caption": int(q), "target": int(t), "rank": int(r), "top": [int(i) for i in row]}
            for q, t, r, row in zip(queries, targets, ranks, top)]


def recall_metrics(ranks: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """0-based ranks (N,) → R@k in %, mean and median 1-based rank."""
    out = {f"R@{k}": 100.0 * (ranks < k).float().mean().item() for k in ks}
    one_based = ranks.float() + 1
    out["mean_rank"] = one_based.mean().item()
    out["median_rank"] = one_based.median().item()
    return out


def evaluate_retrieval(model: nn.Module, pairs: CaptionPairs, cls: str = "alt", resolution: int | None = None,
                       batch_size: int = 64, workers: int = 0, progress: bool = True,
                       num_examples: int = 0) -> dict[str, Any]:
    """Encode images and captions and score retrieval both ways; ``num_examples`` text queries are recorded with
    their top-5 images (:func:`retrieval_examples`, with the caption text and image paths)."""
    transform = common.image_transform(model, resolution)
    feats, _ = common.encode_images(model, pairs.dataset(transform), batch_size, workers, progress)
    images = common.select_cls(feats, cls)
    texts = common.encode_texts(model, pairs.captions, batch_size=max(batch_size, 64), progress=progress)
    caption_image = torch.as_tensor(pairs.caption_image)
    i2t, t2i = retrieval_ranks(images, texts, caption_image)
    examples = [{**e, "caption_text": pairs.captions[e["caption"]], "target_path": str(pairs.images[e["target"]]),
                 "top_paths": [str(pairs.images[i]) for i in e["top"]]}
                for e in retrieval_examples(images, texts, caption_image, num_examples)]
    return {
        "image_to_text": recall_metrics(i2t),
        "text_to_image": recall_metrics(t2i),
        "num_images": len(pairs.images),
        "num_captions": len(pairs.captions),
        "resolution": common.transform_size(transform),
        **({"examples": examples} if examples else {}),
    }


EXAMPLES = examples(
    "tips-probe retrieval --random-init tiny_p8 --data data/scenes/probe/val --resolution 64 -o results "
    "cls=syn",
)


@dataclass
class RetrievalOptions(common.GlobalTaskOptions):
    data: Path = MISSING  # captions .jsonl/.csv/.tsv or a probe split folder
    caption_field: Optional[str] = None
    image_root: Optional[Path] = None
    num_vis: int = 0  # text queries recorded with their top-5 images


def build_parser() -> argparse.ArgumentParser:
    p = TaskParser(schema=RetrievalOptions, prog="tips-probe retrieval", description="Image-to-text and text-to-image retrieval (R@1/5/10, mean and median rank) from image-caption pairs.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path,
                   help="(required) captions .jsonl/.csv/.tsv (image + caption[s]) or a probe split folder with captions.jsonl")
    p.add_argument("--caption-field", default=None,
                   help="key/column of the caption(s): default caption|captions, or for the probe format "
                        "alt_text with --cls alt/mean and synthetic_captions with --cls syn")
    p.add_argument("--image-root", type=Path, default=None, help="where relative image paths start (default: the file's folder)")
    p.add_argument("--num-vis", type=int, default=0, metavar="N",
                   help="record N text queries (evenly spaced over the captions) with their top-5 images in the JSON")
    common.add_global_task_args(p)
    return p


def default_caption_field(data: Path, cls: str) -> str | None:
    """For the probe format, match the caption kind to the CLS trained on it (CLS1 ↔ alt-text, CLS2 ↔ synthetic)."""
    path = data / "captions.jsonl" if data.is_dir() else data
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    with path.open(encoding="utf-8") as f:
        first = f.readline()
    if '"key"' in first and '"alt_text"' in first:
        return "synthetic_captions" if cls == "syn" else "alt_text"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_task_args(build_parser(), argv)
    field = args.caption_field or default_caption_field(args.data, args.cls)
    pairs = read_caption_pairs(args.data, field, args.image_root)
    model, checkpoint = common.load_model(args)
    with common.precision(model, args):
        metrics = evaluate_retrieval(model, pairs, args.cls, args.resolution, args.batch_size, args.num_workers,
                                     not args.no_progress, args.num_vis)
    protocol = common.base_protocol("retrieval", args, checkpoint, metrics.pop("resolution"))
    protocol.update({
        "dataset": str(pairs.source.resolve()),
        "split": pairs.source.parent.name if pairs.source.name == "captions.jsonl" else pairs.source.stem,
        "caption_field": pairs.caption_field,
        "ties": "count against the query",
    })
    i2t, t2i = metrics["image_to_text"], metrics["text_to_image"]
    table = common.markdown_table(
        ["direction", "cls", "resolution", "queries", "R@1", "R@5", "R@10", "mean rank", "median rank"],
        [[name, args.cls, protocol["resolution"], n, m["R@1"], m["R@5"], m["R@10"], m["mean_rank"], m["median_rank"]]
         for name, n, m in (("image→text", metrics["num_images"], i2t), ("text→image", metrics["num_captions"], t2i))],
    )
    common.write_results(args.out, "retrieval", {"protocol": protocol, "metrics": metrics}, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
