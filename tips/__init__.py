"""tips: TIPS (Text-Image Pretraining with Spatial awareness) models, pretraining, features and probes."""

from .models import TIPS, ImageFeatures, ModelConfig, TextConfig, VisionConfig, create_model, get_variant, l2_normalize
from .tokenizers import BPETokenizer, SentencePieceTokenizer, build_tokenizer
from .transforms import Preprocess
from .loading import load
from .formats.pretrained import save_pretrained
from .formats.official import export_official
from .features import extract, load_features
from .models.dpt import DenseHead, DPTConfig
from .formats.heads import load_head
from .precision import add_inference_args, autocast, prepare_for_inference
from .quantize import quantize
from .predict import predict
from .dense_pictures import ADE20K_CLASSES
from .pca import pca_picture, pca_rgb

__version__ = "0.1.0"

__all__ = [
    "ADE20K_CLASSES",
    "TIPS",
    "DenseHead",
    "DPTConfig",
    "add_inference_args",
    "autocast",
    "quantize",
    "ImageFeatures",
    "ModelConfig",
    "TextConfig",
    "VisionConfig",
    "BPETokenizer",
    "SentencePieceTokenizer",
    "Preprocess",
    "build_tokenizer",
    "create_model",
    "export_official",
    "extract",
    "load_features",
    "load",
    "load_head",
    "pca_picture",
    "pca_rgb",
    "prepare_for_inference",
    "predict",
    "save_pretrained",
    "get_variant",
    "l2_normalize",
]
