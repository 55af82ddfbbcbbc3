"""TIPS towers and the variant table."""

from .text import TextTower, build_text_tower
from .tips import TIPS, l2_normalize
from .variants import VARIANTS, ModelConfig, TextConfig, VisionConfig, get_variant, heads_for_width
from .vision import ImageFeatures, TIPSVisionTransformer, build_vision_tower, resample_pos_grid

__all__ = [
    "TIPS",
    "ImageFeatures",
    "ModelConfig",
    "TextConfig",
    "TextTower",
    "TIPSVisionTransformer",
    "VARIANTS",
    "VisionConfig",
    "build_text_tower",
    "build_vision_tower",
    "get_variant",
    "heads_for_width",
    "l2_normalize",
    "resample_pos_grid",
]
