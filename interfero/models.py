"""Geometric source models rendered on a pixel grid (Jy/pixel).

Coordinates: ``x`` increases to the east (left in the image, column 0 is
east), ``y`` to the north (row 0 is north), both in microarcseconds from the
image centre; position angles are east of north, in degrees. Every model is
normalised to ``flux`` Jy.
"""

from __future__ import annotations

import numpy as np

from .errors import InterferoError
from .io import ImageGeometry
from .operators.visibility import pixel_coordinates
from .units import RAD_PER_UAS

MODELS = ("ring", "crescent", "mring", "gaussian", "disk", "point")


def sky_grid(geom: ImageGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre offsets (x east, y north) in microarcseconds, shape (npix, npix)."""
    c = pixel_coordinates(geom.npix, geom.psize_rad) / RAD_PER_UAS
    return np.meshgrid(c, c, indexing="xy")  # x varies along columns, y along rows


def _normalise(img: np.ndarray, flux: float) -> np.ndarray:
    total = img.sum()
    if not (total > 0):
        raise InterferoError("model is empty on this grid (too small, or outside the field of view)")
    return img * (flux / total)


def render(
    kind: str,
    geom: ImageGeometry,
    flux: float = 1.0,
    diameter: float = 44.0,
    width: float = 10.0,
    asymmetry: float = 0.5,
    pa: float = 180.0,
    x0: float = 0.0,
    y0: float = 0.0,
    modes: tuple[tuple[float, float], ...] = ((0.5, 180.0),),
) -> np.ndarray:
    """Render a geometric model.

    Args:
        kind: ``ring`` (Gaussian-profile ring), ``crescent`` (ring with brightness
            ``1 + asymmetry cos(phi - pa)``), ``mring`` (ring with azimuthal
            modes ``modes = ((amplitude, phase_deg), ...)``), ``gaussian``
            (circular, FWHM ``width``), ``disk`` (uniform, ``diameter``) or ``point``.
        diameter: ring or disk diameter (uas); width: ring FWHM (uas).
    """
    if kind not in MODELS:
        raise InterferoError(f"unknown model {kind!r} (choose from {', '.join(MODELS)})")
    if flux <= 0:
        raise InterferoError("model flux must be > 0 Jy")
    x, y = sky_grid(geom)
    x = x - x0
    y = y - y0
    r = np.hypot(x, y)
    phi = np.arctan2(x, y)  # east of north
    sig = width / (2 * np.sqrt(2 * np.log(2)))
    if kind == "point":
        img = np.zeros_like(r)
        img[np.unravel_index(np.argmin(r), r.shape)] = 1.0
    elif kind == "gaussian":
        img = np.exp(-0.5 * (r / sig) ** 2)
    elif kind == "disk":
        img = (r <= diameter / 2).astype(float)
    else:
        img = np.exp(-0.5 * ((r - diameter / 2) / sig) ** 2)
        if kind == "crescent":
            img = img * (1 + asymmetry * np.cos(phi - np.radians(pa)))
        elif kind == "mring":
            mod = np.ones_like(phi)
            for m, (amp, ph) in enumerate(modes, start=1):
                mod += amp * np.cos(m * phi - np.radians(ph))
            img = img * np.clip(mod, 0, None)
    return _normalise(img, flux)
