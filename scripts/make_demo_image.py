"""Recipe for the shipped demo image ``data/demo/crescent_grf_64.fits``.

A 64x64 image over 160 microarcseconds: a crescent (diameter 46 uas, width
12 uas FWHM, brighter to the south-east) whose brightness is modulated by a
smooth Gaussian random field, plus a faint off-ring blob, total flux 2 Jy.
Deterministic (seed 2017).

    python scripts/make_demo_image.py data/demo/crescent_grf_64.fits
"""

import argparse

import numpy as np

from interfero.io import ImageGeometry, write_fits_image
from interfero.models import render, sky_grid


def demo_image(seed: int = 2017) -> tuple[np.ndarray, ImageGeometry]:
    geom = ImageGeometry(64, 160.0, source="demo-crescent")
    ring = render("crescent", geom, flux=1.0, diameter=46.0, width=12.0, asymmetry=0.6, pa=150.0)
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(geom.npix)
    kk = np.hypot(k[:, None], k[None, :])
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((geom.npix, geom.npix))) * np.exp(-((kk / 0.06) ** 2))).real
    field /= field.std()
    img = ring * np.exp(0.35 * field)
    x, y = sky_grid(geom)
    img += 0.03 * img.max() * np.exp(-((x + 30) ** 2 + (y - 35) ** 2) / (2 * 6.0**2))
    return img * (2.0 / img.sum()), geom


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    a = ap.parse_args()
    image, geom = demo_image()
    write_fits_image(image, geom, a.out)
    print(f"wrote {a.out}: {geom.npix}x{geom.npix}, {geom.fov_uas} uas, {image.sum():.3f} Jy")
