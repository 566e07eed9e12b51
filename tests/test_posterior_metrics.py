"""Image metrics against ehtim (the oracle for nxcorr and blurring) and closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from interfero.errors import InterferoError
from interfero.io import ImageGeometry, quiet, read_fits_image
from interfero.regrid import regrid
from posterior.metrics import blur_circular, image_metrics, nxcorr, psnr

from .conftest import shared_path

eh = pytest.importorskip("ehtim")


def _gauss(geom: ImageGeometry, x0=0.0, y0=0.0, fwhm=30.0, flux=1.0):
    c = (np.arange(geom.npix) + 0.5 - geom.npix / 2) * geom.psize_uas
    s = fwhm / 2.3548200450309493
    img = np.exp(-0.5 * (((c[:, None] - y0) ** 2) + (c[None, :] - x0) ** 2) / s**2)
    return flux * img / img.sum()


def _ehtim_image(img: np.ndarray, geom: ImageGeometry):
    with quiet():
        return eh.image.Image(img, geom.psize_rad, 17.76, -29.0, rf=230e9)


@pytest.fixture(scope="module")
def truth():
    return read_fits_image(shared_path("observations", "grmhd_sgra_2017", "truth.fits"))


def test_nxcorr_matches_ehtim_compare_images(truth):
    img, geom = truth
    other = np.roll(img, (3, -2), axis=(0, 1)) * 1.3 + 0.2 * _gauss(geom, 20, -10, 25, 1.0)
    other[:3], other[:, -2:] = 0.0, 0.0  # the rolled-in edge (the source is compact)
    mine, shift = nxcorr(other, img)
    with quiet():
        theirs = _ehtim_image(other, geom).compare_images(_ehtim_image(img, geom), metric=["nxcorr"], shift=True)[0][0]
    # ehtim stops at the integer shift; the sub-pixel refinement can only raise the correlation, slightly
    assert theirs - 1e-9 <= mine <= theirs + 0.01
    assert np.allclose(shift, (-3, 2), atol=0.6)
    assert nxcorr(img, img)[0] == pytest.approx(1.0, abs=1e-12)


def test_subpixel_shift_is_found():
    geom = ImageGeometry(48, 160.0)
    a, b = _gauss(geom, 0.0, 0.0, 25), _gauss(geom, 0.5 * geom.psize_uas, 0.0, 25)
    val, (dy, dx) = nxcorr(a, b)
    assert val > 0.9999
    assert dx == pytest.approx(-0.5, abs=0.05) or dx == pytest.approx(0.5, abs=0.05)


def test_blur_matches_ehtim_blur_circ(truth):
    img, geom = truth
    with quiet():
        ref = _ehtim_image(img, geom).blur_circ(20 * eh.RADPERUAS).imarr()
    mine = blur_circular(img, 20.0, geom.psize_uas)
    assert np.abs(mine - ref).max() < 1e-3 * img.max()
    assert mine.sum() == pytest.approx(img.sum(), rel=1e-9)


def test_blur_of_a_gaussian_adds_widths_in_quadrature():
    geom = ImageGeometry(64, 200.0)
    blurred = blur_circular(_gauss(geom, fwhm=30.0), 40.0, geom.psize_uas)
    expected = _gauss(geom, fwhm=50.0)
    assert np.abs(blurred - expected).max() < 2e-3 * expected.max()


def test_regrid_conserves_flux_and_shape(truth):
    img, geom = truth
    dst = ImageGeometry(32, 160.0)
    out = regrid(img, geom, dst)
    assert out.shape == (32, 32)
    assert out.sum() == pytest.approx(img.sum(), rel=1e-9)  # the 158 uas field lies inside 160 uas
    g_src, g_dst = ImageGeometry(128, 158.0), ImageGeometry(32, 160.0)
    moved = regrid(_gauss(g_src, 10.0, -20.0, 30.0, 2.0), g_src, g_dst)
    assert np.abs(moved - _gauss(g_dst, 10.0, -20.0, 30.0, 2.0)).max() < 0.02 * moved.max()


def test_image_metrics_report_their_grid_and_blurs(truth):
    img, geom = truth
    dst = ImageGeometry(32, 160.0)
    t = regrid(img, geom, dst)
    m = image_metrics(t, t, dst)
    assert m["grid"] == {"npix": 32, "fov_uas": 160.0}
    assert m["nxcorr"] == pytest.approx(1.0) and m["nxcorr_blur10"] == pytest.approx(1.0)
    assert m["ssim"] == pytest.approx(1.0)
    noisy = t + np.random.default_rng(0).normal(0, 0.1 * t.max(), t.shape)
    assert psnr(noisy, t) == pytest.approx(20 * np.log10((t.max() - t.min()) / (0.1 * t.max())), abs=0.5)


def test_metric_errors():
    with pytest.raises(InterferoError, match="same shape"):
        nxcorr(np.ones((4, 4)), np.ones((5, 5)))
    with pytest.raises(InterferoError, match="constant"):
        nxcorr(np.ones((4, 4)), np.arange(16.0).reshape(4, 4))
    with pytest.raises(InterferoError, match="NaN"):
        nxcorr(np.full((4, 4), np.nan), np.ones((4, 4)))


def test_report_shows_samples_of_every_fit():
    from posterior.report import shown_samples

    assert shown_samples([256], 8) == [(i, f"sample {i}") for i in range(8)]
    shown = shown_samples([3, 2, 2], 8)  # 7 pooled samples of three fits: all of them, fits in turn
    assert [j for j, _ in shown] == [0, 3, 5, 1, 4, 6, 2]
    assert shown[1][1] == "fit 1, sample 0" and shown[-1][1] == "fit 0, sample 2"
    assert [j for j, _ in shown_samples([86, 85, 85], 4)] == [0, 86, 171, 1]
