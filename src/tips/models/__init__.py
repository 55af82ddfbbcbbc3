"""tips.models: what a model is — the towers, the variant table, tokenizers and preprocessing, the DPT dense heads,
the class lists a head carries, ``TIPS`` and ``create_model``. The bottom floor: imports nothing else of tips, knows
no file layout and nothing of training."""

from .classes import ADE20K_CLASSES
from .dpt import DenseHead, DPTConfig, Level, build_head, dpt_layers
from .dtypes import DTYPES, resolve_dtype
from .factory import create_model
from .preprocess import Preprocess, to_rgb
from .text import TextTower, build_text_tower
from .tips import TIPS, l2_normalize
from .tokenizers import BPETokenizer, SentencePieceTokenizer, Tokenizer, build_tokenizer
from .variants import VARIANTS, ModelConfig, TextConfig, VisionConfig, get_variant, heads_for_width
from .vision import ImageFeatures, TIPSVisionTransformer, build_vision_tower, resample_pos_grid

__all__ = [
    "ADE20K_CLASSES",
    "BPETokenizer",
    "DTYPES",
    "Preprocess",
    "SentencePieceTokenizer",
    "Tokenizer",
    "build_tokenizer",
    "resolve_dtype",
    "to_rgb",
    "DPTConfig",
    "DenseHead",
    "Level",
    "TIPS",
    "ImageFeatures",
    "ModelConfig",
    "TextConfig",
    "TextTower",
    "TIPSVisionTransformer",
    "VARIANTS",
    "VisionConfig",
    "build_head",
    "build_text_tower",
    "build_vision_tower",
    "create_model",
    "dpt_layers",
    "get_variant",
    "heads_for_width",
    "l2_normalize",
    "resample_pos_grid",
]
