"""Queries embedded the way an index's vectors were: the space of a model, text and image query vectors.

A text query is one text-tower embedding; it searches either image space (CLS1 was trained against alt-text, CLS2
against synthetic captions, both against the same text tower). An image query is the image's CLS vector of the
index's kind, preprocessed as the extraction did (square resize to its resolution).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..inference.job_folder import weights_fingerprint
from ..inference.regions import heat_map, value_readout
from ..models.preprocess import Preprocess, to_rgb
from ..models.tips import TIPS
from .space import EmbeddingSpace


def model_space(model: TIPS, name: str, kind: str, width: int | None = None) -> EmbeddingSpace:
    """The space ``model`` embeds ``kind`` vectors in (its weights' fingerprint, as extraction records it); with
    ``width`` below the model's, the Matryoshka truncation to that many dimensions."""
    full = model.width
    width = width or full
    return EmbeddingSpace(model=name, fingerprint=weights_fingerprint(model), kind=kind, width=width,
                          truncated_from=full if width < full else None)


def truncate(vectors: np.ndarray, width: int) -> np.ndarray:
    """(Q, D) → (Q, width) first dimensions, renormalised (Matryoshka)."""
    cut = vectors[:, :width]
    return cut / np.linalg.norm(cut, axis=1, keepdims=True)


@torch.inference_mode()
def embed_texts(model: TIPS, texts: Sequence[str]) -> np.ndarray:
    """texts → (Q, D) float32, L2-normalised."""
    return torch.nn.functional.normalize(model.encode_text(list(texts)).float(), dim=-1).cpu().numpy()


@torch.inference_mode()
def embed_images(model: TIPS, images: Sequence[Image.Image], resolution: int, kind: str) -> np.ndarray:
    """PIL images → (Q, D) float32 CLS vectors of ``kind`` (``cls_alt`` or ``cls_syn``), L2-normalised."""
    if kind not in ("cls_alt", "cls_syn"):
        raise ValueError(f"an image query searches an image index (cls_alt or cls_syn), not {kind!r}")
    preprocess = Preprocess(resolution, model.patch_size)
    device = next(model.parameters()).device
    batch = torch.stack([preprocess(to_rgb(im)) for im in images]).to(device)
    features = model.encode_image(batch)
    return torch.nn.functional.normalize(getattr(features, kind).float(), dim=-1).cpu().numpy()


@torch.inference_mode()
def region_heat(model: TIPS, image: Image.Image, resolution: int, query: np.ndarray) -> np.ndarray:
    """The cosine of each value-readout patch of ``image`` (square-resized to ``resolution``) with ``query`` (D,)
    → (h, w) float32: where in the image the query is."""
    device = next(model.parameters()).device
    x = Preprocess(resolution, model.patch_size)(to_rgb(image))[None].to(device)
    return heat_map(value_readout(model, x)[0], torch.from_numpy(query).to(device)).cpu().numpy()
