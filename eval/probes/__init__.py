"""Linear probes on frozen features: semantic segmentation and monocular depth (DINOv2 protocols)."""

from .config import ProbeConfig, load_probe_config, preset
from .depth import LinearDepthHead, bin_centers, run_depth
from .losses import GradientLoss, SigLoss
from .metrics import DepthMetrics, confusion_matrix, eigen_crop_mask, image_depth_metrics, segmentation_metrics
from .segmentation import LinearSegHead, run_segmentation, slide_inference
from .run import feature_spec, run_probe

__all__ = [
    "DepthMetrics", "GradientLoss", "LinearDepthHead", "LinearSegHead", "ProbeConfig", "SigLoss", "bin_centers",
    "confusion_matrix", "eigen_crop_mask", "image_depth_metrics", "load_probe_config", "preset", "run_depth",
    "run_probe", "run_segmentation", "feature_spec", "segmentation_metrics", "slide_inference",
]
