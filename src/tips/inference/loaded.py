"""The model an inference job runs: a TIPS model, anything ``tips.load`` reads, or a seeded random baseline, with
its provenance for result files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..formats.loading import load
from ..models.factory import create_model
from ..models.tips import TIPS
from ..models.tokenizers import Tokenizer, build_tokenizer
from ..models.variants import get_variant

MODEL_CHOICE_ERROR = "give exactly one of --model (a checkpoint or official model name) and --random-init VARIANT"


class ModelArgumentError(ValueError):
    """A model and a random-init variant were both given, or neither."""


@dataclass
class LoadedModel:
    """The model a job runs (eval mode, on the CPU, not yet quantized) and where it came from.

    name: a short text for file metadata (``random-init:tiny:seed=0`` or the source as given);
    record: JSON-ready provenance for result files: ``{"random_init", "tokenizer", "seed"}`` or
    ``{"source", "text", "tokenizer"}``, plus ``dtype`` / ``quantize`` when not at full precision.
    """

    model: TIPS
    name: str
    record: dict[str, Any]


def random_model(variant: str, tokenizer: str | os.PathLike | Tokenizer | None = None, seed: int = 0) -> TIPS:
    """``tips.create_model(variant)`` in eval mode with weights drawn from ``seed`` (the global RNG is untouched).

    tokenizer: default the variant's, else ``"bpe"``; the text vocabulary is sized to the tokenizer. The image
    tower is built first, so its weights depend only on the variant and the seed.
    """
    tok = build_tokenizer(tokenizer if tokenizer is not None else variant_tokenizer(variant))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(variant, tokenizer=tok)  # eval mode, the text vocabulary sized to the tokenizer


def build_model(
    model: TIPS | str | os.PathLike | None = None,
    random_init: str | None = None,
    text: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | Tokenizer | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Exactly one of ``model`` (a TIPS model or anything :func:`tips.load` reads) and ``random_init`` (a variant)."""
    if (model is None) == (random_init is None):
        raise ModelArgumentError(MODEL_CHOICE_ERROR)
    if random_init is not None:
        tok = tokenizer if tokenizer is not None else variant_tokenizer(random_init)
        record = {"random_init": random_init, "tokenizer": _describe(tok), "seed": seed}
        return LoadedModel(random_model(random_init, tok, seed), f"random-init:{random_init}:seed={seed}", record)
    if isinstance(model, TIPS):
        return LoadedModel(model.eval(), f"{model.cfg.variant} (in memory)", {"source": "in memory"})
    record = {"source": _describe(model), "text": _describe(text), "tokenizer": _describe(tokenizer)}
    return LoadedModel(load(model, text=text, tokenizer=tokenizer), str(model), record)


def as_loaded(model: TIPS | LoadedModel | str | os.PathLike) -> LoadedModel:
    """A job's ``model`` argument as a :class:`LoadedModel`: kept, wrapped, or loaded with :func:`tips.load`."""
    return model if isinstance(model, LoadedModel) else build_model(model)


def variant_tokenizer(variant: str) -> str:
    """The tokenizer a random ``variant`` gets without a tokenizer: the variant's own, else ``"bpe"``."""
    return get_variant(variant).tokenizer or "bpe"


def _describe(value: Any) -> str | None:
    """A path as an absolute path when it exists (results stay meaningful from another folder), else as given."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        return getattr(value, "kind", type(value).__name__)  # a tokenizer object
    return str(Path(value).resolve()) if Path(value).exists() else str(value)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None) is CUDA when available, else the CPU; anything else as torch reads it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA device is available here; use --device auto or cpu")
    return resolved
