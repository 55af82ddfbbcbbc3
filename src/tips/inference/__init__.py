"""tips.inference: what a user runs on a trained model — feature extraction (:class:`ExtractOptions`), dense
prediction (:class:`PredictOptions`), open-vocabulary segmentation (:func:`open_vocab_segment`), merging, run-time
quantisation and precision, PCA and pictures.
May import ``tips.models``, ``tips.formats`` and ``tips.io``; never a command line."""

from .encoding import ImageProgress, encode_images
from .extract import ExtractOptions, ExtractResult, Features, NoReadableImages, extract, load_features
from .loaded import LoadedModel, ModelArgumentError, build_model, random_model, resolve_device
from .merge import MergeMismatch, merge
from .onednn import pack_linears
from .open_vocab import (
    OpenVocabOptions, OpenVocabRun, OpenVocabSegmentation, encode_classes, load_preset, open_vocab_segment,
    write_open_vocab,
)
from .precision import autocast, prepare_for_inference
from .predict import PredictOptions, PredictResult, predict, write_predictions
from .quantize import quantize
from .regions import value_readout

__all__ = [
    "ExtractOptions",
    "ExtractResult",
    "Features",
    "ImageProgress",
    "LoadedModel",
    "MergeMismatch",
    "ModelArgumentError",
    "NoReadableImages",
    "OpenVocabOptions",
    "OpenVocabRun",
    "OpenVocabSegmentation",
    "PredictOptions",
    "PredictResult",
    "autocast",
    "build_model",
    "encode_classes",
    "encode_images",
    "extract",
    "load_features",
    "load_preset",
    "merge",
    "open_vocab_segment",
    "pack_linears",
    "predict",
    "prepare_for_inference",
    "quantize",
    "random_model",
    "resolve_device",
    "value_readout",
    "write_open_vocab",
    "write_predictions",
]
