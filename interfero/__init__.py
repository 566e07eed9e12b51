"""interfero: interferometric forward models for Bayesian black-hole imaging.

Layers: ``interfero`` (forward models, this package) <- ``priors`` <- ``posterior``.
"""

from .arrays import Array, Station, load_array
from .errors import InterferoError
from .io import ImageGeometry, read_fits_image, read_uvfits, write_fits_image, write_uvfits
from .observation import Observation
from .operators import (
    Denoising,
    GaussianBlur,
    GaussianNoise,
    Inpainting,
    InterferometryOperator,
    LinearOperator,
    LowFrequencyDFT,
    Operator,
    PoissonNoise,
    VisibilityOperator,
    VLBIData,
    box_inpainting,
    random_inpainting,
)
from .simulate import observe_same, simulate
from .uvcoverage import ObservingSetup, uv_coverage

__all__ = [
    "Array", "Station", "load_array", "InterferoError", "ImageGeometry", "read_fits_image", "read_uvfits",
    "write_fits_image", "write_uvfits", "Observation", "Operator", "LinearOperator", "GaussianNoise",
    "PoissonNoise", "Denoising", "GaussianBlur", "LowFrequencyDFT", "Inpainting", "box_inpainting",
    "random_inpainting", "VisibilityOperator", "InterferometryOperator", "VLBIData", "simulate", "observe_same",
    "ObservingSetup", "uv_coverage",
]
