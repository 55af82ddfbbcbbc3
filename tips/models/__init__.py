"""TIPS towers, the variant table, the DPT dense heads and ``create_model``."""

from .dpt import DenseHead, DPTConfig, Level, build_head, dpt_layers
from .factory import create_model
from .text import TextTower, build_text_tower
from .tips import TIPS, l2_normalize
from .variants import VARIANTS, ModelConfig, TextConfig, VisionConfig, get_variant, heads_for_width
from .vision import ImageFeatures, TIPSVisionTransformer, build_vision_tower, resample_pos_grid

__all__ = [
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
