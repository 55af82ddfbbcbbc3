"""tips: TIPS (Text-Image Pretraining with Spatial awareness) models, pretraining, features and probes.

The public names below are resolved on first use (PEP 562), so ``import tips.models`` or ``import tips.io`` loads
that floor alone. This table is the one string-resolved import of the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name → the module that defines it
_PUBLIC: dict[str, str] = {
    # models: what a model is
    "TIPS": "tips.models.tips",
    "l2_normalize": "tips.models.tips",
    "ImageFeatures": "tips.models.vision",
    "ModelConfig": "tips.models.variants",
    "TextConfig": "tips.models.variants",
    "VisionConfig": "tips.models.variants",
    "get_variant": "tips.models.variants",
    "create_model": "tips.models.factory",
    "DenseHead": "tips.models.dpt",
    "DPTConfig": "tips.models.dpt",
    "BPETokenizer": "tips.models.tokenizers",
    "SentencePieceTokenizer": "tips.models.tokenizers",
    "build_tokenizer": "tips.models.tokenizers",
    "Preprocess": "tips.models.preprocess",
    "ADE20K_CLASSES": "tips.models.classes",
    # formats: reading and writing checkpoints
    "load": "tips.formats.loading",
    "load_head": "tips.formats.heads",
    "save": "tips.formats.registry",
    "save_pretrained": "tips.formats.registry",
    # inference: what a user runs
    "extract": "tips.inference.extract",
    "ExtractOptions": "tips.inference.extract",
    "load_features": "tips.inference.extract",
    "predict": "tips.inference.predict",
    "write_predictions": "tips.inference.predict",
    "PredictOptions": "tips.inference.predict",
    "autocast": "tips.inference.precision",
    "prepare_for_inference": "tips.inference.precision",
    "quantize": "tips.inference.quantize",
    "pack_linears": "tips.inference.onednn",
    "pca_picture": "tips.inference.pca",
    "pca_rgb": "tips.inference.pca",
    "open_vocab_segment": "tips.inference.open_vocab",
    "OpenVocabOptions": "tips.inference.open_vocab",
    "encode_classes": "tips.inference.open_vocab",
    "value_readout": "tips.inference.regions",
    "load_preset": "tips.inference.open_vocab",
    "write_open_vocab": "tips.inference.open_vocab",
    # index: search over embeddings
    "Index": "tips.index.vector_index",
    "EmbeddingSpace": "tips.index.space",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'tips' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:  # for type checkers and IDEs; never runs
    from .formats.heads import load_head
    from .formats.loading import load
    from .formats.registry import save, save_pretrained
    from .inference.extract import ExtractOptions, extract, load_features
    from .inference.open_vocab import (
        OpenVocabOptions, encode_classes, load_preset, open_vocab_segment, value_readout, write_open_vocab,
    )
    from .inference.onednn import pack_linears
    from .inference.pca import pca_picture, pca_rgb
    from .inference.precision import autocast, prepare_for_inference
    from .inference.predict import PredictOptions, predict, write_predictions
    from .inference.quantize import quantize
    from .models.classes import ADE20K_CLASSES
    from .models.dpt import DenseHead, DPTConfig
    from .models.factory import create_model
    from .models.preprocess import Preprocess
    from .models.tips import TIPS, l2_normalize
    from .models.tokenizers import BPETokenizer, SentencePieceTokenizer, build_tokenizer
    from .models.variants import ModelConfig, TextConfig, VisionConfig, get_variant
    from .models.vision import ImageFeatures
