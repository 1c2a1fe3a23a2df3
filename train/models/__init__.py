"""PyTorch models: LoRA-SAM and U-Net, each with an optional Phase Learning Module.

``build_model(name, n_classes, plm=True, tile=None, **overrides)`` is the entry point; the
forward contract and config format are in DEVELOPERS.md.
"""

from phaseedge.train.models.common import NORMALIZATION, SegmentationModel
from phaseedge.train.models.plm import PhaseLearningModule
from phaseedge.train.models.registry import MODEL_NAMES, SAM_SPECS, UNET_SPECS, build_model
from phaseedge.train.models.sam import LoRASam
from phaseedge.train.models.sam_checkpoint import LoadReport, load_sam_checkpoint
from phaseedge.train.models.unet import UNet

__all__ = [
    "MODEL_NAMES",
    "NORMALIZATION",
    "SAM_SPECS",
    "UNET_SPECS",
    "LoRASam",
    "LoadReport",
    "PhaseLearningModule",
    "SegmentationModel",
    "UNet",
    "build_model",
    "load_sam_checkpoint",
]
