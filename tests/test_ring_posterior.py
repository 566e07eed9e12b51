"""Ring-feature posteriors on synthetic crescents with known parameters (interfero.models)."""

from __future__ import annotations

import numpy as np
import pytest

from interfero.errors import InterferoError
from interfero.io import ImageGeometry
from interfero.models import render
from posterior.ring import ring_coverage, ring_posterior

GEOM = ImageGeometry(32, 160.0)


@pytest.fixture(scope="module")
def crescents():
    """120 crescents whose diameter ~ N(42, 2) uas and position angle ~ N(350, 15) deg (across north)."""
    rng = np.random.default_rng(3)
    d = rng.normal(42.0, 2.0, 120)
    pa = rng.normal(350.0, 15.0, 120)
    imgs = np.stack([render("crescent", GEOM, flux=0.6, diameter=a, width=10.0, asymmetry=0.5, pa=p)
                     for a, p in zip(d, pa)])
    return imgs, d, pa


def test_diameter_intervals_follow_the_drawn_diameters(crescents):
    imgs, d, _ = crescents
    post = ring_posterior(imgs, GEOM.fov_uas)
    assert post["n_samples"] == 120 and post["n_failed"] == 0
    q = np.quantile(d, [0.025, 0.16, 0.5, 0.84, 0.975], method="weibull")
    got = [post["diameter_uas"][k] for k in ("lo95", "lo68", "median", "hi68", "hi95")]
    np.testing.assert_allclose(got, q * (1 + 0.37 * (10.0 / q) ** 2), atol=0.6)  # Gaussian profile: null shift
    peak = [post["peak_diameter_uas"][k] for k in ("lo95", "lo68", "median", "hi68", "hi95")]
    np.testing.assert_allclose(peak, q, atol=0.6)  # the REx peak diameter: the extractor's bias is ~0.1-0.5 uas
    assert post["width_uas"]["median"] == pytest.approx(10.0, abs=1.5)
    assert post["asymmetry"]["median"] == pytest.approx(0.25, abs=0.03)  # |m1|/m0 of 1 + 0.5 cos = 0.25
    assert abs(post["x0_uas"]["median"]) < 0.5 and abs(post["y0_uas"]["median"]) < 0.5


def test_position_angle_interval_does_not_break_across_north(crescents):
    imgs, _, pa = crescents
    post = ring_posterior(imgs, GEOM.fov_uas)["pa_deg"]
    unwrapped = np.quantile(pa, [0.16, 0.5, 0.84], method="weibull")
    got = [post[k] for k in ("lo68", "median", "hi68")]
    np.testing.assert_allclose(got, unwrapped, atol=2.0)  # 335-365 deg, not 0-360
    assert post["hi95"] - post["lo95"] < 90


def test_coverage_of_known_features(crescents):
    imgs, _, _ = crescents
    cov = ring_coverage(imgs, GEOM.fov_uas, {"diameter_uas": 42.0, "pa_deg": -10.0, "width_uas": 30.0})
    assert cov["diameter_uas"] == {"in68": True, "in95": True}
    assert cov["pa_deg"]["in68"]  # -10 deg is 350 deg
    assert cov["width_uas"] == {"in68": False, "in95": False}


def test_no_ring_is_an_error_not_a_number():
    with pytest.raises(InterferoError, match="ring extraction failed"):
        ring_posterior(np.zeros((4, 32, 32)), 160.0)


@pytest.mark.parametrize("npix", [64, 128])
def test_null_diameter_is_the_thin_ring_null_and_ignores_blurring(npix):
    from interfero.features import RingExtractor
    from posterior.metrics import blur_circular

    geom = ImageGeometry(npix, 160.0)
    ex = RingExtractor(npix, 160.0)
    thin = ex(render("ring", geom, diameter=42.0, width=1.0))
    # J0(pi d rho) has its first zero at 2.405; pixels of 2.5 uas broaden a thin ring a little
    assert thin.null_diameter == pytest.approx(42.0, abs=0.3 if npix == 128 else 0.8)
    img = render("crescent", geom, diameter=40.0, width=10.0, asymmetry=0.5, pa=200.0)
    sharp, blurred = ex(img), ex(blur_circular(img, 15.0, geom.psize_uas))
    assert blurred.null_diameter == pytest.approx(sharp.null_diameter, abs=0.15)
    assert blurred.diameter < sharp.diameter - 1.5  # the peak moves inwards
    gauss = np.exp(-0.5 * (ex.r / 10.0) ** 2)  # a Gaussian profile's transform is a Gaussian: no null
    assert np.isnan(ex._null_diameter(gauss))


def test_ring_features_of_independent_fits_combine_by_rubins_rules(crescents):
    """Two fits of 60 crescents each, one around 40 uas and one around 44: the diameter interval is Rubin's
    t interval over the fits' values, and the position angles (either side of north) stay unwrapped."""
    from posterior.ring import ring_samples, summarize_ring
    from posterior.summary import combined_interval

    imgs, d, pa = crescents
    order = np.argsort(d)
    imgs = np.concatenate([imgs[order[:60]], imgs[order[60:]]])
    feats = ring_samples(imgs, GEOM.fov_uas)
    post = summarize_ring(feats, [60, 60])
    groups = [feats["diameter_uas"][:60], feats["diameter_uas"][60:]]  # combined on the log scale
    for level, lo, hi in ((0.68, "lo68", "hi68"), (0.95, "lo95", "hi95")):
        want = np.exp(combined_interval([np.log(g) for g in groups], level))
        assert (post["diameter_uas"][lo], post["diameter_uas"][hi]) == pytest.approx(tuple(want), rel=1e-12)
        assert post["diameter_uas"][lo] > 0
    assert post["diameter_uas"]["median"] == pytest.approx(np.exp(np.mean([np.log(g).mean() for g in groups])))
    pa = [feats["pa_deg"][:60], feats["pa_deg"][60:]]  # either side of north: on one branch, then combined
    pa = [np.where(g > 180, g - 360, g) for g in pa]
    lo68, hi68 = combined_interval(pa, 0.68)
    assert post["pa_deg"]["hi68"] - post["pa_deg"]["lo68"] == pytest.approx(hi68 - lo68, rel=1e-9)
    # two fits this far apart: wider than the one-fit quantiles of the same 120 values (t with ~1 dof)
    single = summarize_ring(feats)
    assert post["diameter_uas"]["hi95"] - post["diameter_uas"]["lo95"] > single["diameter_uas"]["hi95"] - \
        single["diameter_uas"]["lo95"]
    assert 300 < post["pa_deg"]["median"] < 400 and post["pa_deg"]["hi68"] - post["pa_deg"]["lo68"] < 120
