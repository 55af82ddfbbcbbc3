"""What the server serves (:class:`ServedModel`, :class:`ServedIndex`) and the forwards the worker thread runs on
it, one function per batch kind: each takes a list of items and returns one result per item."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..inference.open_vocab import open_vocab_segment
from ..inference.precision import autocast
from ..inference.quantize import is_quantized
from ..inference.regions import value_readout

DENSE_TASKS = ("depth", "normals", "segmentation")


@dataclass
class ServedIndex:
    """A ``tips-index`` folder as the server sees it (``tips-serve --index`` builds it, tests may too).

    search(queries (Q, width) float32 unit rows, k) → (scores (Q, k'), rows: per query a list of dicts with ``id``,
    ``row`` and the index's other columns); row(i) → the metadata dict of row ``i``; kind: ``cls_alt``, ``cls_syn``
    or ``region``; width: the stored vector width (a Matryoshka truncation when below the model's); resolution:
    the side images were extracted at (image queries and heat maps use it); count: vectors in the index."""

    search: Callable[[np.ndarray, int], tuple[np.ndarray, list[list[dict[str, Any]]]]]
    row: Callable[[int], dict[str, Any]]
    kind: str
    width: int
    resolution: int
    count: int


@dataclass
class ServedModel:
    """model: a TIPS model in eval mode on its device (int8 if :func:`tips.quantize` made it so); name: what requests
    give as ``model``; heads: task → DenseHead; index: an optional :class:`ServedIndex`; random: the weights are
    random (pictures say so); dtype: the compute dtype every forward autocasts to (``tips-serve --dtype``)."""

    model: Any
    name: str
    heads: dict[str, Any] = field(default_factory=dict)
    index: ServedIndex | None = None
    random: bool = False
    dtype: str = "float32"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def precision(self) -> str:
        """How the forwards compute: ``float32``, ``bfloat16`` / ``float16`` (autocast) or ``int8``."""
        return "int8" if is_quantized(self.model) else self.dtype

    def handlers(self) -> dict[str, Callable[[list[Any]], Sequence[Any]]]:
        """kind → the function the worker runs on a batch of that kind's items, under the served dtype's autocast
        (entered on the worker thread, where the forward runs)."""
        table: dict[str, Callable[[list[Any]], Sequence[Any]]] = {
            "text": self.encode_texts, "image": self.encode_images, "open_vocab": self.open_vocab,
            "readout": self.readout,
        }
        for task in self.heads:
            table[task] = lambda images, task=task: self.dense(task, images)
        return {kind: self._in_precision(fn) for kind, fn in table.items()}

    def _in_precision(self, fn: Callable[[list[Any]], Sequence[Any]]) -> Callable[[list[Any]], Sequence[Any]]:
        def run(items: list[Any]) -> Sequence[Any]:
            with autocast(self.model, self.dtype):
                return fn(items)
        return run

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        """texts → per text (its unit embedding (D,) float32, its token count)."""
        ids, padding = self.model.tokenize(texts)  # (B, L), padded to the tower's length: batch-independent
        vectors = torch.nn.functional.normalize(self.model.encode_text(ids, padding).float(), dim=-1).cpu().numpy()
        tokens = (~padding.bool()).sum(1).tolist()
        return list(zip(vectors, tokens))

    @torch.inference_mode()
    def encode_images(self, images: list[torch.Tensor]) -> list[dict[str, np.ndarray]]:
        """images, each (3, R, R) in [0, 1] → per image {"alt": CLS1 (D,), "syn": CLS2 (D,)}, unit length."""
        features = self.model.encode_image(torch.stack(images).to(self.device))
        alt = torch.nn.functional.normalize(features.cls_alt.float(), dim=-1).cpu().numpy()
        syn = torch.nn.functional.normalize(features.cls_syn.float(), dim=-1).cpu().numpy()
        return [{"alt": a, "syn": s} for a, s in zip(alt, syn)]

    @torch.inference_mode()
    def dense(self, task: str, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """images (3, R, R) → the head's output at (R, R): depth (1, R, R) metres, normals (3, R, R), logits (C, R, R)."""
        out = self.heads[task].predict(self.model, torch.stack(images).to(self.device))
        return list(out.float().cpu())

    def open_vocab(self, items: list[tuple[Any, list]]) -> list[Any]:
        """(PIL image, classes) → :func:`tips.open_vocab_segment` of it (labels at the image's own size)."""
        return [open_vocab_segment(self.model, image, classes) for image, classes in items]

    @torch.inference_mode()
    def readout(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """images (3, R, R) → value-readout patch features (h, w, D) (where a text lands in the image)."""
        return list(value_readout(self.model, torch.stack(images).to(self.device)).float().cpu())
