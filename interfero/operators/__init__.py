"""Forward operators on the shared contract (see :mod:`interfero.operators.base`)."""

from .base import GaussianNoise, LinearOperator, NoiseModel, Operator, PoissonNoise
from .closure import PRODUCTS, InterferometryOperator, VLBIData, VLBILikelihood
from .image import (
    Denoising,
    GaussianBlur,
    Inpainting,
    LowFrequencyDFT,
    MatrixOperator,
    box_inpainting,
    random_inpainting,
)
from .visibility import VisibilityOperator, dft_matrix

__all__ = [
    "GaussianNoise", "LinearOperator", "NoiseModel", "Operator", "PoissonNoise", "PRODUCTS",
    "InterferometryOperator", "VLBIData", "VLBILikelihood", "Denoising", "GaussianBlur", "Inpainting",
    "LowFrequencyDFT", "MatrixOperator", "box_inpainting", "random_inpainting", "VisibilityOperator", "dft_matrix",
]
