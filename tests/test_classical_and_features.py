"""Classical priors against closed forms and finite differences; the ring extractor on rings of known size."""

import math

import numpy as np
import pytest
import torch

from interfero.errors import InterferoError
from interfero.features import RingExtractor, ring_features
from interfero.io import ImageGeometry
from interfero.models import render
from priors.classical import GaussianPrior, MEMPrior, SumPrior, TVPrior, image_regulariser
from priors.datasets import make_dataset


def test_gaussian_prior_matches_torch_distribution():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.1 * torch.eye(6, dtype=torch.float64)
    mean = torch.randn(1, 2, 3, generator=g, dtype=torch.float64)
    prior = GaussianPrior(mean, cov)
    ref = torch.distributions.MultivariateNormal(mean.reshape(-1), cov)
    x = prior.sample(5, generator=g)
    torch.testing.assert_close(prior.log_prob(x), ref.log_prob(x.reshape(5, -1)))
    torch.testing.assert_close(prior.score(x), -((x - mean).reshape(5, -1) @ torch.linalg.inv(cov)).reshape(5, 1, 2, 3))


@pytest.mark.parametrize("make", [lambda: TVPrior((1, 5, 5), weight=2.0, delta=0.1),
                                  lambda: MEMPrior(torch.rand(1, 5, 5, dtype=torch.float64) + 0.5, weight=3.0)])
def test_classical_gradients_vs_finite_differences(make):
    prior = make()
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.2
    assert torch.autograd.gradcheck(lambda y: prior.log_prob(y), (x.requires_grad_(True),))


def test_tv_and_mem_values():
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    x[0, 0, 1, 1] = 1.0
    # forward differences: the centre pixel has |grad| = sqrt(2); left and upper neighbours 1 each
    tv = TVPrior((1, 3, 3), weight=1.0, delta=1e-12).log_prob(x)
    assert float(tv) == pytest.approx(-(math.sqrt(2) + 2), abs=1e-9)
    ref = torch.full((1, 3, 3), 0.5, dtype=torch.float64)
    y = torch.full((1, 1, 3, 3), 0.25, dtype=torch.float64)
    assert float(MEMPrior(ref).log_prob(y)) == pytest.approx(-9 * 0.25 * math.log(0.5), rel=1e-12)
    assert float(MEMPrior(ref).log_prob(ref[None])) == pytest.approx(0.0, abs=1e-12)


def test_image_regulariser_is_the_flux_normalised_sum_and_scale_free():
    g = torch.Generator().manual_seed(2)
    ref = torch.rand(1, 6, 6, dtype=torch.float64, generator=g) + 0.1
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64, generator=g) + 0.05
    flux = float(ref.sum())
    both = image_regulariser("tv+mem", ref, weight=7.0)
    tv = image_regulariser("tv", ref, weight=7.0)
    mem = image_regulariser("mem", ref, weight=7.0)
    torch.testing.assert_close(both.log_prob(x), tv.log_prob(x) + mem.log_prob(x))
    delta = 1e-6 * flux / 36
    torch.testing.assert_close(tv.log_prob(x), TVPrior((1, 6, 6), weight=7.0 / flux, delta=delta).log_prob(x))
    torch.testing.assert_close(mem.log_prob(x), MEMPrior(ref, weight=7.0 / flux).log_prob(x))
    assert float(mem.log_prob(ref[None])) == pytest.approx(0.0, abs=1e-12)  # MEM is maximal at the reference
    # dimensionless: rescaling the images and the reference (e.g. Jy -> mJy) leaves log p unchanged
    torch.testing.assert_close(image_regulariser("tv+mem", 1000 * ref, weight=7.0).log_prob(1000 * x),
                               both.log_prob(x), rtol=1e-6, atol=1e-6)
    assert both.name == "tv+mem" and both.normalised == "unnormalised"


@pytest.mark.parametrize("call,message", [
    (lambda r: image_regulariser("l2", r), "unknown regulariser 'l2'"),
    (lambda r: image_regulariser("tv", r, weight=0.0), "weight must be > 0"),
    (lambda r: image_regulariser("tv", torch.zeros_like(r)), "positive total flux"),
    (lambda r: SumPrior([TVPrior((1, 2, 2)), TVPrior((1, 3, 3))]), "share one image shape"),
    (lambda r: SumPrior([]), "at least one prior"),
])
def test_regulariser_bad_input(call, message):
    with pytest.raises(InterferoError, match=message):
        call(torch.ones(1, 4, 4))


@pytest.mark.parametrize("npix", [32, 64])
@pytest.mark.parametrize("diameter,width,x0,y0", [(40, 8, 0, 0), (50, 12, 6, -4), (26, 6, -3, 5), (20, 5, 3, -2)])
def test_ring_extractor_on_known_rings(npix, diameter, width, x0, y0):
    geom = ImageGeometry(npix, 160.0)
    img = render("ring", geom, flux=1.5, diameter=diameter, width=width, x0=x0, y0=y0)
    f = RingExtractor(npix, 160.0)(img)
    psize = 160.0 / npix
    assert f.diameter == pytest.approx(diameter, abs=0.25 * psize + 0.5)
    # point-sampled pixels broaden the profile: the width is measured to within a pixel
    assert f.width == pytest.approx(width, abs=psize)
    assert f.x0 == pytest.approx(x0, abs=0.5) and f.y0 == pytest.approx(y0, abs=0.5)
    assert f.flux == pytest.approx(1.5)


def test_ring_extractor_crescent_orientation():
    geom = ImageGeometry(64, 160.0)
    img = render("crescent", geom, diameter=44, width=8, asymmetry=0.6, pa=90.0)  # bright to the east
    f = RingExtractor(64, 160.0)(img)
    assert abs((f.pa - 90.0 + 180) % 360 - 180) < 10
    assert f.asymmetry > 0.15


def test_ring_extractor_tracks_synthetic_diameters():
    d = make_dataset("blackholes", 60, 32, seed=3)
    feats = ring_features(d["images"], 160.0)
    true = d["params"][:, d["param_names"].index("diameter")]
    meas = np.array([f.diameter for f in feats])
    assert np.median(np.abs(meas - true)) < 2.5
    assert np.corrcoef(meas, true)[0, 1] > 0.8


def test_ring_extractor_finds_the_default_laws_small_rings():
    """The default prior's law (``disk-lnflux``: floors, tails, blobs, turbulence) with rings 20-30 uas across:
    the extractor puts the centre within 10 uas of the drawn one and the peak diameter within 10 uas of the
    drawn diameter on nearly all of them (a search starting at 12.5 uas missed a third)."""
    from priors.datasets.blackholes import PARAMS, make_black_holes

    imgs, par = make_black_holes(240, 32, 160.0, seed=5, law="disk-lnflux")
    p = {k: par[:, i] for i, k in enumerate(PARAMS)}
    small = p["diameter"] < 30
    assert small.sum() >= 40
    feats = ring_features(imgs[small], 160.0)
    centre_err = np.hypot([f.x0 for f in feats] - p["x0"][small], [f.y0 for f in feats] - p["y0"][small])
    diam_err = np.abs([f.diameter for f in feats] - p["diameter"][small])
    assert np.mean(centre_err < 10) >= 0.9
    assert np.mean(diam_err < 10) >= 0.9


def test_black_hole_dataset_records_parameters():
    d = make_dataset("blackholes", 20, 32, seed=1)
    flux = d["params"][:, d["param_names"].index("flux")]
    np.testing.assert_allclose(d["images"].sum(axis=(1, 2, 3)), flux, rtol=1e-5)
    assert np.all(d["images"] >= 0)
    assert d["images"].shape == (20, 1, 32, 32)
    p = make_dataset("patches", 10, 16, seed=0)["images"]
    assert p.shape == (10, 1, 16, 16) and 0 <= p.min() and p.max() <= 1


def test_black_hole_laws():
    """``law="v1"`` (bh32's training set), ``"extended"`` and ``"disk"``: parameters drawn as documented,
    more extended faint emission in turn, and the recorded law; an unknown law is a one-line error."""
    from interfero.errors import InterferoError

    stats = {}
    for law in ("v1", "extended", "disk"):
        d = make_dataset("blackholes", 400, 32, seed=2, law=law)
        par = dict(zip(d["param_names"], d["params"].T))
        frac, fwhm, tail = par["floor_fraction"], par["floor_fwhm"], par["tail"]
        stats[law] = (np.mean(frac > 0), frac.max(), fwhm.min(), fwhm.max(),
                      np.median((d["images"][:, 0] > 0.0012).mean((1, 2))))
        assert d["generator"]["law"] == law
        if law == "disk":
            assert abs(np.mean(tail > 0) - 0.6) < 0.08 and 3 <= tail[tail > 0].min() and tail.max() <= 15
            assert np.abs(par["floor_dx"]).max() <= 15 and np.abs(par["floor_dy"]).max() > 10
            assert np.mean(par["asymmetry"] > 0) > 0.99
        else:
            assert not tail.any() and not par["floor_dx"].any() and not par["floor_dy"].any()
            assert np.mean(par["asymmetry"] > 0) < 0.45  # crescents only: a third of the images
    p1, f1, lo1, hi1, _ = stats["v1"]
    p2, f2, lo2, hi2, _ = stats["extended"]
    assert abs(p1 - 0.5) < 0.08 and f1 <= 0.3 and lo1 >= 20 and hi1 <= 80
    assert abs(p2 - 0.85) < 0.06 and 0.3 < f2 <= 0.6 and lo2 >= 30 and 80 < hi2 <= 110
    assert stats["v1"][4] < stats["extended"][4] < stats["disk"][4]
    with pytest.raises(InterferoError, match="unknown black-hole law"):
        make_dataset("blackholes", 2, 32, law="wide")


def test_lognormal_flux_law():
    """``"disk-lnflux"``: total flux log-normal (median 1.4 Jy, sigma 0.35 in ln flux), images summing to it;
    the other laws keep the box U(0.5, 2.5) Jy; everything else is the disk law."""
    from dataclasses import replace

    from scipy.stats import kstest

    from priors.datasets.blackholes import LAWS, draw_parameters

    assert replace(LAWS["disk-lnflux"], flux_lognormal=None) == LAWS["disk"] != LAWS["disk-lnflux"]
    rng = np.random.default_rng(4)
    ln = np.log([draw_parameters(rng, "disk-lnflux")["flux"] for _ in range(4000)])
    assert abs(ln.mean() - np.log(1.4)) < 3 * 0.35 / np.sqrt(4000) and abs(ln.std() - 0.35) < 0.02
    assert kstest(ln, "norm", args=(np.log(1.4), 0.35)).pvalue > 0.01
    box = np.array([draw_parameters(rng, "disk")["flux"] for _ in range(4000)])
    assert 0.5 <= box.min() and box.max() <= 2.5 and kstest((box - 0.5) / 2, "uniform").pvalue > 0.01
    d = make_dataset("blackholes", 8, 32, seed=1, law="disk-lnflux")
    flux = dict(zip(d["param_names"], d["params"].T))["flux"]
    np.testing.assert_allclose(d["images"].sum((1, 2, 3)), flux, rtol=1e-5)


def test_disk_tail_profile():
    """An exponential outer tail: the radial profile past the ring falls by e per ``tail`` uas."""
    from priors.datasets.blackholes import PARAMS, render_black_hole

    p = dict.fromkeys(PARAMS, 0.0) | {"n_blobs": 0, "flux": 1.0, "diameter": 40.0, "width": 4.0, "tail": 10.0}
    img = render_black_hole(p, 64, 160.0, np.random.default_rng(0))
    row = img[31:33].mean(0)  # the east-west cut through the centre, 2.5 uas pixels
    x = (np.arange(64) + 0.5 - 32) * 2.5
    out = (x > 30) & (x < 45)
    slope = np.polyfit(x[out], np.log(row[out]), 1)[0]
    assert slope == pytest.approx(-1 / 10.0, rel=0.05)


def test_l1_regulariser_is_the_flux_normalised_absolute_sum():
    ref = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.1
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    l1 = image_regulariser("l1", ref, weight=5.0)
    want = -5.0 * x.abs().reshape(3, -1).sum(-1) / float(ref.sum())
    torch.testing.assert_close(l1.log_prob(x), want, rtol=1e-6, atol=1e-6)


def test_the_prior_kind_is_decided_once_by_the_factory():
    import torch

    from priors.factory import build_prior, prior_kind
    from priors.score_prior import ScorePrior

    ref = torch.full((1, 8, 8), 2.0 / 64)
    for name in ("tv", "mem", "tv+mem", "l1"):
        kind = prior_kind(name)
        assert kind.classical and kind.positive_images
        prior = build_prior(kind, reference=ref, weight=10.0)
        assert not isinstance(prior, ScorePrior) and prior.image_shape == (1, 8, 8)
    kind = prior_kind("default")
    assert not kind.classical and not kind.positive_images
    assert isinstance(build_prior(kind, expect_image_size=32), ScorePrior)
    with pytest.raises(InterferoError, match="unknown prior"):
        build_prior(prior_kind("nonesuch"))


def test_broad_law_sources():
    """``"broad"``: rings (with and without jets), doubles and elliptical sources in the documented shares; the
    first draw's ring parameters are those of ``disk-lnflux``; a double's components hold 1 : ``ratio`` of the
    flux at ``sep`` apart, and a jet adds ``jet_fraction`` of the flux along ``jet_pa`` (a Gaussian whose
    FWHM is its length, centred half a length out: ``1 - 2 Phi(-2 sqrt(2 ln 2) / 2)`` of it beyond the centre)."""
    from scipy.stats import norm

    from priors.datasets.blackholes import PARAMS, draw_parameters, render_black_hole

    rng = np.random.default_rng(7)
    draws = [draw_parameters(rng, "broad") for _ in range(4000)]
    source = np.array([d["source"] for d in draws])
    jet = np.array([d["jet_fraction"] > 0 for d in draws])
    counter = np.array([d["counter_fraction"] > 0 for d in draws])
    for share, expected in ((np.mean(source == 0), 0.70), (np.mean(source == 1), 0.15), (np.mean(source == 2), 0.15),
                            (np.mean(jet), 0.37), (np.mean(counter), 0.15)):
        assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / 4000)
    assert not np.any(jet & (source > 0)) and not np.any(counter & ~jet)
    first = draw_parameters(np.random.default_rng(3), "broad")
    ref = draw_parameters(np.random.default_rng(3), "disk-lnflux")
    assert all(first[k] == ref[k] for k in PARAMS[:PARAMS.index("source")])

    base = dict.fromkeys(PARAMS, 0.0) | {"n_blobs": 0, "flux": 2.0, "axis_ratio": 1.0}
    double = base | {"source": 1.0, "sep": 60.0, "ratio": 0.5, "comp_fwhm1": 10.0, "comp_fwhm2": 15.0,
                     "comp_pa": 90.0}
    img = render_black_hole(double, 64, 160.0, rng, "broad")
    east, west = img[:, :32].sum(), img[:, 32:].sum()  # column 0 is east: the first component at pa 90
    assert east / west == pytest.approx(2.0, rel=0.01) and img.sum() == pytest.approx(2.0, rel=1e-6)
    x = (31.5 - np.arange(64)) * 2.5  # uas east of the centre per column
    assert (img.sum(0) * x)[:32].sum() / east == pytest.approx(30.0, abs=0.5)
    ring = base | {"diameter": 40.0, "width": 6.0}
    sym = render_black_hole(ring, 64, 160.0, rng, "broad")
    jetted = render_black_hole(ring | {"jet_fraction": 0.4, "jet_pa": 0.0, "jet_length": 40.0, "jet_width": 6.0},
                               64, 160.0, rng, "broad")
    assert sym[:32].sum() - sym[32:].sum() == pytest.approx(0.0, abs=1e-6)
    beyond = 1 - 2 * norm.cdf(-np.sqrt(2 * np.log(2)))
    assert (jetted[:32].sum() - jetted[32:].sum()) / 2.0 == pytest.approx(0.4 * beyond, rel=0.02)  # row 0 north
