"""Ring features measured from an image: centre, diameter, width (a REx-like extractor).

The centre is the point whose radial profiles (``n_angles`` rays) have their
brightness peaks at the most equal radii: a coarse grid search around the
image centroid refined by Nelder-Mead (the criterion of REx, Chael et al. 2019,
written anew here; ehtim's own REx does not run on SciPy >= 1.14). Then:

- ``diameter`` = twice the mean peak radius over the rays (uas);
- ``width`` = median over rays of the full width at half maximum of the
  profile around its peak, above the profile's minimum inside the peak (uas);
- ``pa`` and ``asymmetry`` from the first azimuthal Fourier mode of the
  brightness along the ring (degrees east of north; ``|m1| / m0``);
- ``null_diameter``: the diameter of the thin ring whose first visibility null
  falls where that of the image's azimuthally averaged profile (about the
  centre) does, ``d = j_01 / (pi rho_0)`` (``j_01`` = 2.405, the first zero of
  ``J0``; ``rho_0`` from the profile's Hankel transform). Convolving a ring with
  any circular kernel multiplies its visibilities by the kernel's transform and
  leaves the null in place about the same centre, so this diameter does not
  shrink with resolution (on lopsided images with floors the REx centre itself
  can move with resolution, and the null with it), and it is the size that
  interferometric data (closure amplitudes across the null) constrain; for a
  ring of Gaussian radial profile of FWHM ``w`` it is
  ``d (1 + ~0.37 (w / d)^2)``. The peak ``diameter`` is the image-domain (REx)
  one: at an array's resolution it sits inside the emission. NaN when the
  profile's transform has no null below ``rho_max`` (a blob, not a ring).

Images are ``(H, W)`` arrays with row 0 north and column 0 east (ehtim order).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage, optimize, special

from .errors import InterferoError
from .units import RAD_PER_UAS

J01 = 2.404825557695773  # first zero of the Bessel function J0


@dataclass(frozen=True)
class RingFeatures:
    x0: float  # uas east of the image centre
    y0: float  # uas north of the image centre
    diameter: float  # uas
    width: float  # uas (FWHM)
    pa: float  # deg east of north, brightest side
    asymmetry: float  # |m1| / m0 of the brightness along the ring
    flux: float  # Jy
    null_diameter: float = float("nan")  # uas: thin ring with the same first visibility null

    def as_dict(self) -> dict:
        return asdict(self)


class RingExtractor:
    """Ring features of images on one pixel grid.

    Args:
        npix: image size (square images).
        fov_uas: field of view (uas).
        r_max: largest radius searched (uas, default 45% of the FOV).
        n_angles, n_radii: rays and samples per ray.
        search_uas: half-size of the centre search box around the centroid (uas).
        rho_max: longest baseline searched for the profile's first visibility null (wavelengths).
        r_min_px, r_min_uas: the smallest ring radius searched, the larger of ``r_min_px`` pixels and
            ``r_min_uas`` (7.5 uas on 5 uas pixels: the default prior's rings, 20-60 uas across, all fit).
    """

    def __init__(
        self,
        npix: int,
        fov_uas: float,
        r_max: float | None = None,
        n_angles: int = 36,
        n_radii: int = 120,
        search_uas: float = 15.0,
        rho_max: float = 20e9,
        r_min_px: float = 1.5,
        r_min_uas: float = 6.0,
    ) -> None:
        self.npix, self.fov = int(npix), float(fov_uas)
        self.psize = self.fov / self.npix
        self.r = np.linspace(0.0, r_max or 0.45 * self.fov, n_radii)
        self.theta = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)  # east of north
        self.search = float(search_uas)
        self.r_min = max(r_min_px * self.psize, r_min_uas)  # uas: peaks nearer the centre are not a ring
        self.k0 = max(int(np.searchsorted(self.r, self.r_min)), 1)  # first radius sample searched for a peak
        # Hankel transform of a radial profile sampled at self.r: V(rho) = 2 pi int I(r) J0(2 pi rho r) r dr
        self.rho = np.linspace(0.0, rho_max, 800)
        w = np.gradient(self.r) * self.r  # trapezoid-like weights r dr
        self.hankel = special.j0(2 * np.pi * self.rho[:, None] * self.r[None, :] * RAD_PER_UAS) * w[None, :]


    def _pixel(self, x_uas, y_uas):
        """(row, col) fractional pixel indices of sky offsets (x east, y north)."""
        c = (self.npix - 1) / 2
        return c - y_uas / self.psize, c - x_uas / self.psize

    def _profiles(self, img, x0, y0):
        xs = x0 + self.r[None, :] * np.sin(self.theta[:, None])
        ys = y0 + self.r[None, :] * np.cos(self.theta[:, None])
        row, col = self._pixel(xs, ys)
        return ndimage.map_coordinates(img, [row, col], order=3, mode="constant", cval=0.0)

    def _peak_radii(self, prof):
        k = self.k0 + np.argmax(prof[:, self.k0:], axis=1)
        k = np.clip(k, 1, len(self.r) - 2)
        rows = np.arange(prof.shape[0])
        a, b, c = prof[rows, k - 1], prof[rows, k], prof[rows, k + 1]
        den = a - 2 * b + c
        shift = np.where(np.abs(den) > 0, 0.5 * (a - c) / np.where(den == 0, 1, den), 0.0)
        dr = self.r[1] - self.r[0]
        return self.r[k] + np.clip(shift, -1, 1) * dr, k

    def _spread(self, img, p, centre):
        off = np.hypot(p[0] - centre[0], p[1] - centre[1])
        prof = self._profiles(img, p[0], p[1])
        radii, k = self._peak_radii(prof)
        # a ray still falling where the search starts has no peak: from inside a blob every ray falls from r_min,
        # equal "radii" with no spread; such centres are penalised, not taken for the ring's centre
        edge = np.mean((k <= self.k0) & (prof[:, self.k0 - 1] >= prof[:, self.k0]))
        return np.std(radii) + edge * self.fov + max(0.0, off - self.search) * 10  # stay in the search box

    def centroid(self, img):
        c = (self.npix - 1) / 2
        rows, cols = np.indices(img.shape)
        w = np.clip(img, 0, None)
        tot = w.sum()
        return (c - (w * cols).sum() / tot) * self.psize, (c - (w * rows).sum() / tot) * self.psize

    def __call__(self, image: np.ndarray) -> RingFeatures:
        img = np.asarray(image, dtype=float)
        if img.shape != (self.npix, self.npix):
            raise InterferoError(f"ring extractor set up for {self.npix}x{self.npix} images, got {img.shape}")
        if not np.all(np.isfinite(img)) or not img.sum() > 0:
            raise InterferoError("ring extraction needs a finite image with positive total flux")
        cx, cy = self.centroid(img)
        grid = np.linspace(-self.search, self.search, 7)
        best = min((self._spread(img, (cx + gx, cy + gy), (cx, cy)), cx + gx, cy + gy) for gx in grid for gy in grid)
        res = optimize.minimize(
            lambda p: self._spread(img, p, (cx, cy)), x0=[best[1], best[2]], method="Nelder-Mead",
            options={"xatol": 0.05, "fatol": 1e-4, "maxiter": 200},
        )
        x0, y0 = (res.x if res.fun <= best[0] else best[1:])
        prof = self._profiles(img, x0, y0)
        radii, k = self._peak_radii(prof)
        widths = [self._fwhm(p, kk) for p, kk in zip(prof, k)]
        widths = [w for w in widths if np.isfinite(w)]
        ring = prof[np.arange(len(k)), k]
        null_d = self._null_diameter(prof.mean(0))
        m1 = np.sum(ring * np.exp(1j * self.theta))
        m0 = ring.sum()
        return RingFeatures(
            x0=float(x0), y0=float(y0), diameter=float(2 * radii.mean()),
            width=float(np.median(widths)) if widths else float("nan"),
            pa=float(np.degrees(np.angle(m1)) % 360), asymmetry=float(abs(m1) / m0) if m0 > 0 else float("nan"),
            flux=float(img.sum()), null_diameter=null_d,
        )

    def _null_diameter(self, profile: np.ndarray, depth: float = 1e-3) -> float:
        """``j_01 / (pi rho_0)`` in uas, ``rho_0`` the first sign change (+ to -) of the profile's Hankel
        transform (linear interpolation) into a negative lobe deeper than ``depth`` of the zero-spacing
        value (shallower crossings are quadrature noise in the far tail of a blob's transform); NaN without one."""
        vis = self.hankel @ profile
        if not vis[0] > 0:
            return float("nan")
        down = np.flatnonzero((vis[:-1] > 0) & (vis[1:] <= 0))
        up = np.flatnonzero((vis[:-1] <= 0) & (vis[1:] > 0))
        for k in down:
            end = up[up > k][0] + 1 if np.any(up > k) else len(vis)
            if vis[k + 1:end].min() < -depth * vis[0]:
                rho0 = self.rho[k] + (self.rho[k + 1] - self.rho[k]) * vis[k] / (vis[k] - vis[k + 1])
                return float(J01 / (np.pi * rho0) / RAD_PER_UAS)
        return float("nan")

    def _fwhm(self, p, k):
        peak = p[k]
        floor = p[: k + 1].min()
        half = floor + 0.5 * (peak - floor)
        if not peak > floor:
            return np.nan
        inner = np.nonzero(p[:k] < half)[0]
        outer = np.nonzero(p[k:] < half)[0]
        if len(inner) == 0 or len(outer) == 0:
            return np.nan
        i, j = inner[-1], k + outer[0]
        r_in = np.interp(half, [p[i], p[i + 1]], [self.r[i], self.r[i + 1]])
        r_out = np.interp(half, [p[j], p[j - 1]], [self.r[j], self.r[j - 1]])
        return r_out - r_in


def ring_features(images: np.ndarray, fov_uas: float, **kwargs) -> list[RingFeatures]:
    """Features of a stack of images ``(N, H, W)`` (or ``(N, 1, H, W)``) over ``fov_uas``."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[:, 0]
    ex = RingExtractor(images.shape[-1], fov_uas, **kwargs)
    return [ex(im) for im in images]
