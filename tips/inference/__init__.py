"""tips.inference: what a user runs on a trained model — feature extraction (:class:`ExtractOptions`), dense
prediction (:class:`PredictOptions`), merging, run-time quantisation and precision, PCA and pictures.
May import ``tips.models``, ``tips.formats`` and ``tips.io``; never a command line."""

from .extract import ExtractOptions, ExtractResult, Features, NoReadableImages, extract, load_features
from .loaded import LoadedModel, ModelArgumentError, build_model, random_model, resolve_device
from .merge import MergeMismatch, merge
from .precision import autocast, prepare_for_inference
from .predict import PredictOptions, PredictResult, predict, write_predictions
from .quantize import quantize

__all__ = [
    "ExtractOptions",
    "ExtractResult",
    "Features",
    "LoadedModel",
    "MergeMismatch",
    "ModelArgumentError",
    "NoReadableImages",
    "PredictOptions",
    "PredictResult",
    "autocast",
    "build_model",
    "extract",
    "load_features",
    "merge",
    "predict",
    "prepare_for_inference",
    "quantize",
    "random_model",
    "resolve_device",
    "write_predictions",
]
