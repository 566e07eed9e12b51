"""Resampling a Jy/pixel image onto another grid (pixels, field of view), conserving flux.

Used to compare a truth on its own grid with a reconstruction (posterior
metrics) and to put any image onto a prior's grid (priors.ood).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import InterferoError
from .io import ImageGeometry


def regrid(image: np.ndarray, src: ImageGeometry, dst: ImageGeometry, order: int = 1) -> np.ndarray:
    """Resample a Jy/pixel image from grid ``src`` to ``dst`` (same centre), conserving the flux inside the
    destination field: surface brightness is interpolated (``order`` 1 = bilinear, 3 = cubic) and the result
    is rescaled so its total equals the source flux falling in the destination field."""
    image = np.asarray(image, dtype=np.float64)
    if image.shape != (src.npix, src.npix):
        raise InterferoError(f"image shape {image.shape} does not match its grid {src.npix}x{src.npix}")
    # destination pixel centres in source pixel coordinates
    c_dst = (np.arange(dst.npix) + 0.5 - dst.npix / 2) * dst.psize_uas
    coords = c_dst / src.psize_uas + src.npix / 2 - 0.5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    sb = image / src.psize_uas**2  # Jy per uas^2
    out = ndimage.map_coordinates(sb, [yy, xx], order=order, mode="constant", cval=0.0) * dst.psize_uas**2
    if order > 1:
        out = np.clip(out, 0.0, None) if image.min() >= 0 else out
    # source flux inside the destination field
    c_src = (np.arange(src.npix) + 0.5 - src.npix / 2) * src.psize_uas
    inside = np.abs(c_src) <= dst.fov_uas / 2
    target = float(image[np.ix_(inside, inside)].sum())
    total = float(out.sum())
    if total != 0 and target != 0:
        out *= target / total
    return out
