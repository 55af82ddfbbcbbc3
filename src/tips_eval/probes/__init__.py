"""Probes on frozen features: semantic segmentation and monocular depth (DINOv2 protocols), surface normals
(probe3d's loss and metrics)."""

from .config import ProbeConfig, load_probe_config, preset
from .depth import LinearDepthHead, bin_centers, run_depth
from .losses import AngularLoss, GradientLoss, SigLoss, UncertaintyAngularLoss
from .metrics import (
    DepthMetrics, NormalMetrics, confusion_matrix, eigen_crop_mask, image_depth_metrics, image_normal_metrics,
    segmentation_metrics,
)
from .normals import LinearNormalsHead, run_normals
from .segmentation import LinearSegHead, run_segmentation, slide_inference
from .run import feature_spec, run_probe

__all__ = [
    "AngularLoss", "DepthMetrics", "GradientLoss", "LinearDepthHead", "LinearNormalsHead", "LinearSegHead",
    "NormalMetrics", "ProbeConfig", "SigLoss", "UncertaintyAngularLoss", "bin_centers", "confusion_matrix",
    "eigen_crop_mask", "image_depth_metrics", "image_normal_metrics", "load_probe_config", "preset", "run_depth",
    "run_normals", "run_probe", "run_segmentation", "feature_spec", "segmentation_metrics", "slide_inference",
]
