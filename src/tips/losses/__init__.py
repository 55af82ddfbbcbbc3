"""tips.losses: standalone, distributed-aware loss modules for TIPS pretraining; each owns its state and runs on
one CPU process. Imports nothing else of tips."""

from .contrastive import ContrastiveLoss, SigmoidBias, gather_with_grad
from .distill import DINOLoss, TeacherCentering, centered_softmax, sinkhorn_knopp, target_statistics
from .feature import FeatureDistillLoss
from .matryoshka import MatryoshkaContrastiveLoss
from .spread import SPREAD_KINDS, GlobalOrthogonalRegularizer, KoLeoLoss, build_spread_loss
from .retention import RETENTION_KINDS, retention_loss
from .mim import IBOTPatchLoss, PixelReconstructionLoss, patchify, select_patches

__all__ = [
    "ContrastiveLoss",
    "DINOLoss",
    "FeatureDistillLoss",
    "GlobalOrthogonalRegularizer",
    "KoLeoLoss",
    "MatryoshkaContrastiveLoss",
    "SPREAD_KINDS",
    "IBOTPatchLoss",
    "PixelReconstructionLoss",
    "RETENTION_KINDS",
    "SigmoidBias",
    "TeacherCentering",
    "build_spread_loss",
    "centered_softmax",
    "gather_with_grad",
    "patchify",
    "retention_loss",
    "select_patches",
    "sinkhorn_knopp",
    "target_statistics",
]
