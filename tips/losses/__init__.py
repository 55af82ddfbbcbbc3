"""Standalone loss modules for TIPS pretraining; each owns its state and runs on one CPU process."""

from .contrastive import ContrastiveLoss, SigmoidBias, gather_with_grad
from .distill import DINOLoss, TeacherCentering, centered_softmax, sinkhorn_knopp, target_statistics
from .feature import FeatureDistillLoss
from .mim import IBOTPatchLoss, PixelReconstructionLoss, patchify, select_patches

__all__ = [
    "ContrastiveLoss",
    "DINOLoss",
    "FeatureDistillLoss",
    "IBOTPatchLoss",
    "PixelReconstructionLoss",
    "SigmoidBias",
    "TeacherCentering",
    "centered_softmax",
    "gather_with_grad",
    "patchify",
    "select_patches",
    "sinkhorn_knopp",
    "target_statistics",
]
