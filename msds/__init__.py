"""msds: fast, differentiable MSDS and DeepSSIM image-quality metrics for PyTorch.

MSDS (arXiv 2604.19159) computes DeepSSIM (Gram-matrix structural similarity
of VGG16 relu5_1 features, TPAMI 2025) at every level of an image pyramid and
fuses the per-level scores with learnable weights.
"""

from msds.backbone import VGG16Trunk
from msds.head import gram_ssim, multiscale_gram_ssim
from msds.metric import MSDS, DeepSSIM, ReferenceFeatures
from msds.pyramid import image_pyramid
from msds.weights import WeightsError, save_trimmed_weights

__version__ = "0.1.0"

__all__ = [
    "MSDS",
    "DeepSSIM",
    "ReferenceFeatures",
    "VGG16Trunk",
    "WeightsError",
    "gram_ssim",
    "image_pyramid",
    "multiscale_gram_ssim",
    "save_trimmed_weights",
]
