"""tips.data: the training input pipeline — webdataset shards or tables → views (global, local, masked) → Batch.
May import ``tips.io`` and ``tips.models`` (tokenizers)."""

from .batch import Batch
from .masking import (
    MaskConfig,
    block_mask,
    draw_mask_ratio,
    make_mask,
    make_masks,
    num_masked_patches,
    random_mask,
)
from .pipeline import DataConfig, TrainLoader, build_train_loader
from .skips import SkipCounter
from .views import ViewConfig, make_views, sample_crop_box

__all__ = [
    "Batch",
    "DataConfig",
    "MaskConfig",
    "SkipCounter",
    "TrainLoader",
    "ViewConfig",
    "block_mask",
    "build_train_loader",
    "draw_mask_ratio",
    "make_mask",
    "make_masks",
    "make_views",
    "num_masked_patches",
    "random_mask",
    "sample_crop_box",
]
