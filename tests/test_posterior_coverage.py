"""Coverage of the truth by the posterior's per-pixel intervals, against the Gaussian closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

import posterior.calibration as calstats
from interfero.errors import InterferoError
from posterior.metrics import error_against_std, interval_coverage, nxcorr, posterior_region
from posterior.summary import summarize


def _ring(n=32):
    c = np.arange(n) + 0.5 - n / 2
    r = np.hypot(c[:, None], c[None, :] - 1.5)
    return np.exp(-0.5 * ((r - 7.0) / 2.0) ** 2) * (1.2 + np.cos(np.arctan2(c[:, None], c[None, :])))


def _coverage(post, truth, shift):
    iv = {"68": (post.lo68[0], post.hi68[0]), "95": (post.lo95[0], post.hi95[0])}
    return interval_coverage(iv, truth, shift)


@pytest.mark.parametrize("width", [1.0, 1 / 3])
def test_gaussian_posterior_coverage_matches_the_closed_form(width):
    """Samples N(truth, (width sigma)^2) per pixel, truth drawn from N(centre, sigma^2): the equal-tailed
    intervals cover the truth with probability P(|Z| < z width), z = 0.994 (68.27%) or 1.96 (95%)."""
    rng = np.random.default_rng(0)
    truth = _ring()
    sigma = 0.05 * truth.max()
    centre = truth + sigma * rng.standard_normal(truth.shape)  # the posterior's centre given noisy data
    samples = centre + width * sigma * rng.standard_normal((4000, 1, *truth.shape))
    cov = _coverage(summarize(samples), truth, (0.0, 0.0))
    n = cov["coverage_pixels"]
    assert n > 150
    for name, z in (("68", 0.99446), ("95", 1.95996)):
        p = math.erf(z * width / math.sqrt(2))
        assert cov[f"truth_coverage_{name}"] == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n) + 0.01)


@pytest.mark.parametrize("n", [20, 64, 128])
def test_sample_intervals_hold_a_new_draw_at_their_nominal_rate(n):
    """N draws of a law and one more: the summary's 68% / 95% intervals hold the extra draw with the nominal
    probability (for exchangeable draws (N + 1 - 2k) / (N + 1) between the k-th smallest and largest; here
    over 40000 repetitions), where numpy's default quantiles fall short (61% for 20 draws). A 95% interval
    needs N >= 39 (below, the extremes hold a new draw with (N - 1) / (N + 1) at most)."""
    rng = np.random.default_rng(n)
    draws = rng.standard_normal((n + 1, 40000))
    post = summarize(draws[:n])
    new = draws[n]
    for lo, hi, level in ((post.lo68, post.hi68, 0.68), (post.lo95, post.hi95, 0.95))[:1 + (n >= 39)]:
        assert np.mean((new >= lo) & (new <= hi)) == pytest.approx(level, abs=0.012)
    default = np.quantile(draws[:n], [0.16, 0.84], axis=0)
    assert np.mean((new >= default[0]) & (new <= default[1])) < 0.68 - 0.6 / (n + 1)


@pytest.mark.parametrize("noise, frac", [(0.1, 0.1), (3.0, 0.1), (3.0, 0.3)])
def test_coverage_over_pixels_chosen_from_the_data_is_nominal_for_an_exact_posterior(noise, frac):
    """Truths drawn from a Gaussian prior around a ring (pixel std 0.5), data = truth + white noise, the exact
    posterior per pixel: over the pixels where the posterior mean is at or above ``frac`` of its peak, its
    intervals hold the truth at the nominal rates (pooled over 300 truths). Over the truth's own bright
    pixels they do when the data pin every pixel (noise 0.1), but not once the posterior is wide (noise 3):
    72% with the 10% threshold, 61% with 30% (which pixels the truth picks depends on where it sits in the
    posterior's spread)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:16, :16] - 7.5
    mu = np.exp(-0.5 * ((np.hypot(yy, xx) - 5.0) / 1.5) ** 2)
    tau = 0.5
    var = 1.0 / (1.0 / tau**2 + 1.0 / noise**2)
    hits = {"data": [], "truth": []}
    for _ in range(300):
        truth = mu + tau * rng.standard_normal(mu.shape)
        mean = var * (mu / tau**2 + (truth + noise * rng.standard_normal(mu.shape)) / noise**2)
        iv = {lv: (mean - z * np.sqrt(var), mean + z * np.sqrt(var)) for lv, z in (("68", 0.9945), ("95", 1.96))}
        for key, region in (("data", posterior_region(mean, frac)), ("truth", None)):
            c = interval_coverage(iv, truth, region=region, region_frac=frac)
            n = c["coverage_pixels"]
            hits[key].append((c["truth_coverage_68"] * n, c["truth_coverage_95"] * n, n))
    data, own = (np.sum(hits[k], axis=0) for k in ("data", "truth"))
    assert data[0] / data[2] == pytest.approx(0.68, abs=0.01) and data[1] / data[2] == pytest.approx(0.95, abs=0.01)
    if noise < 1:
        assert own[0] / own[2] == pytest.approx(0.68, abs=0.01)
    elif frac < 0.2:
        assert own[0] / own[2] > 0.70
    else:
        assert own[0] / own[2] < 0.63


def test_posterior_region_bad_input():
    with pytest.raises(InterferoError, match="positive peak"):
        posterior_region(np.zeros((4, 4)))
    with pytest.raises(InterferoError, match="region_frac"):
        posterior_region(np.ones((4, 4)), 1.5)
    with pytest.raises(InterferoError, match="non-empty mask"):
        interval_coverage({"68": (np.zeros((4, 4)), np.ones((4, 4)))}, np.ones((4, 4)), region=np.zeros((4, 4), bool))


def test_coverage_aligns_the_truth_by_the_nxcorr_shift():
    """Closure data do not fix the position: a posterior displaced by (2, -3) pixels is scored after the
    shift nxcorr finds; without it, its coverage collapses."""
    rng = np.random.default_rng(1)
    truth = _ring()
    sigma = 0.05 * truth.max()
    samples = truth + sigma * rng.standard_normal((2000, 1, *truth.shape))
    post = summarize(np.roll(samples, (2, -3), axis=(-2, -1)))
    _, shift = nxcorr(post.mean[0], truth)
    assert shift == pytest.approx((-2.0, 3.0), abs=0.05)
    aligned = _coverage(post, truth, shift)
    assert aligned["truth_coverage_95"] > 0.9 and aligned["truth_coverage_68"] > 0.6
    assert _coverage(post, truth, (0.0, 0.0))["truth_coverage_95"] < 0.5


def test_truth_moved_by_a_fraction_of_a_pixel_keeps_its_pixel_noise():
    """A posterior half a pixel away from a noisy truth (a smooth ring plus white noise of the posterior's own
    per-pixel std, as a prior's pixel jitter): moved back by a Fourier shift the truth keeps its noise and the
    intervals hold it at the nominal rates; moved by linear interpolation (half a pixel along both axes: the
    mean of four pixels) it would keep half its noise's std and sit inside the 68% intervals 90% of the time."""
    from posterior.metrics import shift_image

    def ring(dy, dx, n=32):
        c = np.arange(n) + 0.5 - n / 2
        r = np.hypot(c[:, None] - dy, c[None, :] - dx)
        return np.exp(-0.5 * ((r - 7.0) / 2.0) ** 2)

    rng = np.random.default_rng(7)
    sigma = 0.05
    centre = ring(0.5, -0.5)  # where the posterior sits: nxcorr's shift (dy, dx) = (-0.5, 0.5) onto the truth
    post = summarize(centre + sigma * rng.standard_normal((4000, 1, 32, 32)))
    inside = {"68": [], "95": []}
    for _ in range(10):
        truth = ring(0.0, 0.0) + sigma * rng.standard_normal((32, 32))
        cov = _coverage(post, truth, (-0.5, 0.5))
        for k in inside:
            inside[k].append(cov[f"truth_coverage_{k}"])
    assert np.mean(inside["68"]) == pytest.approx(0.68, abs=0.03)
    assert np.mean(inside["95"]) == pytest.approx(0.95, abs=0.015)
    # whole pixels move exactly; the fractional move is nxcorr's own (it finds the shift back)
    t = ring(0.0, 0.0)
    moved = shift_image(t, (2, -3))
    np.testing.assert_array_equal(moved[2:, :-3], t[:-2, 3:])  # (what comes in from outside the field is 0)
    assert not moved[:2].any() and not moved[:, -3:].any()
    assert nxcorr(shift_image(t, (0.3, -1.7)), t)[1] == pytest.approx((-0.3, 1.7), abs=0.01)
    np.testing.assert_allclose(shift_image(t, (0.3, -1.7))[3:-3, 3:-3], ring(0.3, -1.7)[3:-3, 3:-3], atol=2e-3)


def test_coverage_bad_input():
    t = _ring()
    with pytest.raises(InterferoError, match="shape"):
        interval_coverage({"68": (np.zeros((4, 4)), np.ones((4, 4)))}, t)
    with pytest.raises(InterferoError, match="finite 2-D"):
        interval_coverage({}, t * np.nan)
    with pytest.raises(InterferoError, match="region_frac"):
        interval_coverage({}, t, region_frac=1.5)


def test_error_against_std_in_closed_form():
    """A mean off the truth by 0.5 std on every pixel: median |z| 0.5, rms error 0.5 std; only source pixels
    (truth >= 10% of its peak) count, so a wild background pixel changes nothing."""
    truth = np.zeros((8, 8))
    truth[2:6, 2:6] = 1.0
    std = np.full((8, 8), 0.2)
    mean = truth + 0.5 * std
    mean[0, 0] = 50.0  # background: outside the scored region
    r = error_against_std(mean, std, truth)
    assert r["truth_median_abs_z"] == pytest.approx(0.5)
    assert r["truth_rms_error"] == pytest.approx(0.1) and r["posterior_rms_std"] == pytest.approx(0.2)
    with pytest.raises(InterferoError, match="shape"):
        error_against_std(mean[:4], std, truth)


@pytest.mark.parametrize("k", [2, 3, 6])
def test_combined_fits_cover_at_the_nominal_rate_where_pooled_quantiles_cannot(k):
    """K narrow fits centred on independent draws of the posterior N(mu, s^2), and a truth drawn from the
    same posterior (simulation-based calibration): Rubin's t intervals cover the truth at their nominal
    level; the pooled samples' quantiles hold it only within the range of the K centres, (K - 1) / (K + 1)."""
    from posterior.summary import combined_fits, combined_interval, std_parts, summarize_fits

    rng = np.random.default_rng(k)
    n_pix, s, w = 20000, 1.0, 0.01
    mu = rng.normal(0.0, 5.0, n_pix)
    truth = mu + s * rng.standard_normal(n_pix)
    groups = [(mu + s * rng.standard_normal(n_pix)) + w * rng.standard_normal((40, n_pix)) for _ in range(k)]
    # the closed form by hand against the module's
    m = np.array([g.mean(0) for g in groups])
    within = np.mean([g.var(0, ddof=1) for g in groups], 0)
    between = ((m - m.mean(0)) ** 2).sum(0) / (k - 1)
    mean, sd, nu = combined_fits(groups)
    np.testing.assert_allclose(mean, m.mean(0), atol=1e-12)
    np.testing.assert_allclose(sd**2, within + (1 + 1 / k) * between, rtol=1e-12)
    np.testing.assert_allclose(nu, (k - 1) * (1 + within / ((1 + 1 / k) * between)) ** 2, rtol=1e-12)
    own, spread = std_parts(groups)  # the two parts: here the fits' width w, and the spread of their centres
    np.testing.assert_allclose(own**2 + spread**2, sd**2, rtol=1e-12)
    assert np.median(own) == pytest.approx(w, rel=0.05) and np.median(spread) > 50 * w
    np.testing.assert_allclose(std_parts(groups[:1])[0], groups[0].std(0, ddof=1), rtol=1e-12)
    assert not std_parts(groups[:1])[1].any()
    for level in (0.68, 0.95):
        lo, hi = combined_interval(groups, level)
        cover = np.mean((truth >= lo) & (truth <= hi))
        assert cover == pytest.approx(level, abs=4 * math.sqrt(level * (1 - level) / n_pix))
        pooled = summarize(np.concatenate(groups)[:, None])
        qlo, qhi = (pooled.lo95, pooled.hi95) if level == 0.95 else (pooled.lo68, pooled.hi68)
        assert np.mean((truth >= qlo[0]) & (truth <= qhi[0])) < (k - 1) / (k + 1) + 0.02
    post = summarize_fits([g[:, None] for g in groups])
    assert post.fit_sizes == [40] * k and post.samples.shape == (40 * k, 1, n_pix)
    np.testing.assert_allclose(post.std[0], sd, rtol=1e-12)


def test_combined_fits_bad_input_and_agreeing_fits():
    from posterior.summary import combined_interval, split_fits, summarize_fits

    x = np.arange(10.0)
    with pytest.raises(InterferoError, match="at least 2"):
        combined_interval([x], 0.68)
    with pytest.raises(InterferoError, match="add up"):
        split_fits(x, [4, 4])
    with pytest.raises(InterferoError, match="level"):
        combined_interval([x, x], 1.0)
    with pytest.raises(InterferoError, match="NaN"):
        summarize_fits([x, np.full(3, np.nan)])
    # identical fits: no between-fit variance, the normal interval of the within-fit spread
    g = np.random.default_rng(1).standard_normal(1000)
    lo, hi = combined_interval([g, g], 0.95)
    assert (hi - lo) / 2 == pytest.approx(1.959964 * g.std(ddof=1), rel=1e-6)


def _calibration_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "calibration.py"
    spec = importlib.util.spec_from_file_location("calibration_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_calibration_case_bootstrap_brackets_the_pooled_coverage():
    # equal cases: no spread; two kinds of case: the 90% range lies within theirs and holds the pooled value
    assert calstats.case_bootstrap([0.7] * 5, np.ones(5)) == [pytest.approx(0.7), pytest.approx(0.7)]
    values, weights = [0.5, 0.9] * 10, np.array([1.0, 3.0] * 10)
    lo, hi = calstats.case_bootstrap(values, weights)
    pooled = np.average(values, weights=weights)  # 0.8
    assert 0.5 < lo < pooled < hi < 0.9
    # about +-1.645 standard errors of the weighted mean over 20 cases (delta method): +-0.05
    assert hi - lo == pytest.approx(0.10, abs=0.03)


def test_calibration_time_left_uses_the_finished_cases_median_fit_time():
    cal = _calibration_script()
    assert cal.time_left([], 0, 2) == "every case finished"
    assert cal.time_left([{"case": 0}], 10, 2) == "10 cases to run, 2 at a time"  # no fit time yet: no guess
    done = [{"fit_seconds": 1000.0}, {"fit_seconds": 1800.0}, {"fit_seconds": 1500.0}, {"error": "refused"}]
    # median 1500 s, 12 cases two at a time: 12 * 1500 / 2 s = 2.5 h
    assert cal.time_left(done, 12, 2) == ("12 cases to run, 2 at a time: about 2.5 h at the finished cases'"
                                          " median fit time of 1500 s")


def test_calibration_resumes_only_with_the_same_settings(tmp_path):
    cal = _calibration_script()
    settings = {"n": 3, "arrays": "EHT2017", "sets": "in_distribution", "steps": 400, "batch": 16,
                "samples": 256, "ensemble": 3, "seed": 1}
    cal.check_run_settings(tmp_path, settings)
    cal.check_run_settings(tmp_path, settings | {"n": 50})  # more cases of the same run
    with pytest.raises(InterferoError, match=r"other settings \(ensemble, steps: 3, 400\); use another --out"):
        cal.check_run_settings(tmp_path, settings | {"steps": 600, "ensemble": 1})
    # a run from before --lr existed used 2e-3: it resumes with that step size and no other
    cal.check_run_settings(tmp_path, settings | {"lr": 2e-3})
    with pytest.raises(InterferoError, match=r"other settings \(lr: 0.002\)"):
        cal.check_run_settings(tmp_path, settings | {"lr": 5e-3})
    # ... and the shipped bh32lnflux prior and its law, the default then; a new default prior is a new run
    cal.check_run_settings(tmp_path, settings | {"prior": "bh32lnflux", "law": "disk-lnflux"})
    with pytest.raises(InterferoError, match=r"other settings \(law, prior: disk-lnflux, bh32lnflux\)"):
        cal.check_run_settings(tmp_path, settings | {"prior": "bh32broad", "law": "broad"})
    # ... and the softplus flow's warm start
    cal.check_run_settings(tmp_path, settings | {"warm_start": "flow"})
    with pytest.raises(InterferoError, match=r"other settings \(warm_start: flow\)"):
        cal.check_run_settings(tmp_path, settings | {"warm_start": "map"})
    cal.check_run_settings(tmp_path, settings | {"alpha": 1.0})
    with pytest.raises(InterferoError, match=r"other settings \(alpha: 1.0\)"):
        cal.check_run_settings(tmp_path, settings | {"alpha": 0.5})
    # ... and Laplace-based flows each from its own fit's mean, before --laplace-start existed
    with pytest.raises(InterferoError, match=r"other settings \(laplace_start: own\)"):
        cal.check_run_settings(tmp_path, settings | {"laplace_start": "pooled"})
    cal.check_run_settings(tmp_path, settings | {"laplace_start": "own"})
    # ... and the score-only prior term is a new run too (runs before --prior-method used the ELBO)
    cal.check_run_settings(tmp_path, settings | {"prior_method": "elbo"})
    with pytest.raises(InterferoError, match=r"other settings \(prior_method: elbo\)"):
        cal.check_run_settings(tmp_path, settings | {"prior_method": "score"})
    # ... and DPI (runs before --method); another method, or other settings of one, is a new run
    cal.check_run_settings(tmp_path, settings | {"method": "dpi", "method_options": {}})
    with pytest.raises(InterferoError, match=r"other settings \(method: dpi\)"):
        cal.check_run_settings(tmp_path, settings | {"method": "pnp-dm"})


def test_calibration_reuses_a_finished_case_only_on_its_own_truth(tmp_path):
    """A case folder fitted to another image (another set definition or seed) is refused, not reported."""
    import json

    from interfero.io import ImageGeometry, write_fits_image

    cal = _calibration_script()
    folder = tmp_path / "case_000"
    folder.mkdir()
    truth = np.random.default_rng(0).uniform(0, 0.01, (32, 32))
    write_fits_image(truth, ImageGeometry(32, 160.0), folder / "truth.fits")
    scored = {"case": 0} | dict.fromkeys(cal.ADDED_SCORES, 0.5)
    (folder / "case.json").write_text(json.dumps(scored))
    job = {"set": "prior_draws", "case": 0, "truth": truth.tolist(), "folder": str(folder)}
    assert cal.finished_cases([job])[0] == [scored]
    other = job | {"truth": (truth + 1e-4).tolist()}
    with pytest.raises(InterferoError, match="not this run's truth for prior_draws case 0"):
        cal.finished_cases([other])


def test_calibration_runs_every_set_and_array_case_by_case(tmp_path):
    """A run stopped early has measured each set and array on the same truths: jobs go by case index."""
    import argparse

    cal = _calibration_script()
    args = argparse.Namespace(seed=7, steps=10, prior_method="elbo", elbo_draws=1, batch=4, lr=2e-3, samples=8,
                              device="cpu",
                              warm_start="flow",
                              alpha=1.0, flow_base="diagonal", flow_basis="pixel", laplace_start="pooled", ensemble=1,
                              rescore=False, method="pnp-dm", method_options={"rho_min": "0.02"},
                              jitter=0.001, eps_std=0.001,
                              out=str(tmp_path))
    sets = {"in_distribution": np.zeros((3, 2, 2)), "grmhd_like": np.ones((3, 2, 2))}
    jobs = cal.case_jobs(sets, ["EHT2017", "EHT2017-SPT"], args)
    # the prior's own draws carry its jitter: none is added to them for coverage_jittered
    draws = cal.case_jobs({"prior_draws": np.zeros((1, 2, 2))}, ["EHT2017"], args)
    assert {j["jitter"] for j in jobs} == {0.001} and draws[0]["jitter"] == 0.0
    # a method whose prior is smoothed more (pnp-dm's rho_min): the draws get the rest, in quadrature
    args.jitter = 0.0013
    draws = cal.case_jobs({"prior_draws": np.zeros((1, 2, 2))}, ["EHT2017"], args)
    assert draws[0]["jitter"] == pytest.approx(math.sqrt(0.0013**2 - 0.001**2))
    assert [(j["case"], j["set"], j["array"]) for j in jobs[:5]] == [
        (0, "in_distribution", "EHT2017"), (0, "in_distribution", "EHT2017-SPT"),
        (0, "grmhd_like", "EHT2017"), (0, "grmhd_like", "EHT2017-SPT"), (1, "in_distribution", "EHT2017")]
    assert len(jobs) == 12 and [j["case"] for j in jobs] == sorted(j["case"] for j in jobs)
    assert {j["flow_base"] for j in jobs} == {"diagonal"}  # each case is fitted with the run's flow base
    assert {j["flow_basis"] for j in jobs} == {"pixel"}
    assert all(j["method"] == "pnp-dm" and j["method_options"] == {"rho_min": "0.02"} for j in jobs)
    # a case keeps its truth, seed and folder whatever the order
    j = next(j for j in jobs if j["set"] == "grmhd_like" and j["array"] == "EHT2017-SPT" and j["case"] == 2)
    assert j["truth"] == [[1.0, 1.0], [1.0, 1.0]] and j["seed"] == 9
    assert j["folder"] == str(tmp_path / "grmhd_like" / "EHT2017-SPT" / "case_002")


def test_sample_jitter_is_the_smoothing_of_the_prior_a_method_samples_under():
    from posterior.methods import sample_jitter
    from priors.pretrained import load_prior

    prior = load_prior("default")
    assert sample_jitter("dpi", {}, prior) == pytest.approx(prior.eps_std)
    assert sample_jitter("pnp-dm", {}, prior) == pytest.approx(0.02 * prior.scale)  # PnPDMConfig.rho_min
    assert sample_jitter("pnp-dm", {"rho_min": "0.03"}, prior) == pytest.approx(0.03 * prior.scale)
    assert prior.eps_std < 0.02 * prior.scale


def test_calibration_rescore_measures_the_ring_anew_without_refitting(tmp_path, small_obs):
    """A finished case rescored: the ring features come from its saved samples with the current extractor
    (Rubin's rules over its fits), the pixel scores from its samples' intervals; no fit is run. The samples' own
    data fit and the truth's log-likelihood rank, which its metrics predate, are measured on them, each fit's
    moved back where it was fitted."""
    import json

    import h5py

    from interfero.io import write_uvfits
    from interfero.models import render
    from posterior.metrics import sample_chi2, truth_loglik_rank
    from posterior.reconstruct import ReconstructSettings, build_problem
    from posterior.ring import ring_samples, summarize_ring

    cal = _calibration_script()
    rng = np.random.default_rng(0)
    diam = [40.0 + rng.normal(0, 1.5) + k for k in range(3) for _ in range(8)]
    samples = np.stack([render("ring", cal.GEOM, flux=1.0, diameter=d, width=8) for d in diam])[:, None]
    truth = render("ring", cal.GEOM, flux=1.0, diameter=41.0, width=8)
    folder = tmp_path / "case_000"
    (folder / "rec").mkdir(parents=True)
    shifts = [[0, 0], [0, 0], [1, -2]]  # the third fit was moved by pool_components
    stored = samples.copy()
    stored[16:] = np.roll(samples[16:], (-1, 2), axis=(-2, -1))
    with h5py.File(folder / "rec" / "samples.h5", "w") as f:
        f["samples"] = stored
        f["fit_sizes"] = [8, 8, 8]
        f["mean"], f["std"] = stored.mean(0), 2.0 * stored.std(0) + 1e-3  # what reconstruct saved beside them
    write_uvfits(small_obs, folder / "obs.uvfits")
    metrics = {"nxcorr_shift_px": [0, 0], "fit_seconds": 12.0, "truth_coverage_68": 0.7, "truth_coverage_95": 0.9,
               "coverage_pixels": 100, "nxcorr_blur10": 0.99, "chi2_cphase": 1.0, "chi2_logcamp": 1.1,
               "ensemble_members": [{"shift_px": sh, "chi2_cphase": 1.0 + k, "chi2_logcamp": 1.1,
                                     "chi2_samples_median": {"cphase": 2.0 + k, "logcamp": 1.5}}
                                    for k, sh in enumerate(shifts)],
               "ring": {"diameter_uas": {"median": 20.0, "lo68": 19.0, "hi68": 21.0, "lo95": 18.0, "hi95": 22.0}}}
    (folder / "rec" / "metrics.json").write_text(json.dumps(metrics))
    stale = {"case": 0, "array": "EHT2017", "set": "in_distribution", "seconds": 30.0, "ring_diameter_in68": False}
    (folder / "case.json").write_text(json.dumps(stale))
    job = {"case": 0, "array": "EHT2017", "set": "in_distribution", "truth": truth.tolist(), "folder": str(folder),
           "jitter": 1e-4, "seed": 5}
    old = cal.run_case(job)  # finished and not rescored: as it was, with the jittered coverage it predates added
    bounds = calstats.case_intervals(stored[:, 0].astype(float), [8, 8, 8], (0.68, 0.95))
    region = truth >= 0.1 * truth.max()
    noisy = truth[region][None] + 1e-4 * np.random.default_rng(5).standard_normal((calstats.JITTER_DRAWS, region.sum()))
    jit = {f"coverage_jittered_{k}": np.mean((noisy >= bounds[lv][0][region]) & (noisy <= bounds[lv][1][region]))
           for k, lv in (("68", "0.68"), ("95", "0.95"))}
    pooled = np.quantile(stored[:, 0][:, region], [0.16, 0.84, 0.025, 0.975], axis=0, method="weibull")
    quant = {"coverage_quantiles_68": np.mean((truth[region] >= pooled[0]) & (truth[region] <= pooled[1])),
             "coverage_quantiles_95": np.mean((truth[region] >= pooled[2]) & (truth[region] <= pooled[3]))}
    rank = truth_loglik_rank(build_problem(folder / "obs.uvfits", ReconstructSettings())[2], samples, truth)
    rank = {"loglik_rank": rank["truth_loglik_rank"], "loglik_excess": rank["truth_loglik_excess"]}
    mean = stored[:, 0].mean(0)
    chosen = mean >= 0.1 * mean.max()  # the pixels the posterior mean picks, not the truth
    by_mean = {f"coverage_mean_region_{k}": np.mean((truth[chosen] >= bounds[lv][0][chosen])
                                                    & (truth[chosen] <= bounds[lv][1][chosen]))
               for k, lv in (("68", "0.68"), ("95", "0.95"))} | {"coverage_mean_region_pixels": int(chosen.sum())}
    assert {k: old[k] for k in stale} == stale and {k: old[k] for k in jit} == pytest.approx(jit)
    assert {k: old[k] for k in quant} == pytest.approx(quant) and {k: old[k] for k in rank} == pytest.approx(rank)
    assert {k: old[k] for k in by_mean} == pytest.approx(by_mean)
    assert old["levels_mean_region"]["0.68"] == pytest.approx(by_mean["coverage_mean_region_68"])
    assert set(old["levels_mean_region"]) == {str(lv) for lv in calstats.LEVELS}  # the mean's pixels' reliability
    # the truth's place in Rubin's t distribution over the mean's pixels, from the fits' moments directly
    from scipy import stats

    g = stored[:, 0].reshape(3, 8, *truth.shape)[:, :, chosen]
    mk, wv = g.mean(1), g.var(1, ddof=1).mean(0)
    tv = wv + (1 + 1 / 3) * mk.var(0, ddof=1)
    nu = 2 * (1 + wv / ((1 + 1 / 3) * mk.var(0, ddof=1))) ** 2
    cdf = stats.t.cdf((truth[chosen] - mk.mean(0)) / np.sqrt(tv), nu)
    assert old["rank_hist_mean_region"] == np.histogram(cdf, bins=calstats.RANK_BINS, range=(0, 1))[0].tolist()
    # |mean - truth| / std of the saved mean and std over the truth's source pixels, their median
    saved_mean, saved_std = stored[:, 0].mean(0), 2.0 * stored[:, 0].std(0) + 1e-3
    z = np.median(np.abs(saved_mean[region] - truth[region]) / saved_std[region])
    assert old["median_abs_z"] == pytest.approx(z, rel=1e-5)
    assert old["fits_chi2_worst"] == 3.0  # the third fit's closure phases, from metrics.json's members
    assert old["fits_chi2"] == [{"mean": {"cphase": 1.0 + k, "logcamp": 1.1},
                                 "samples": {"cphase": 2.0 + k, "logcamp": 1.5}} for k in range(3)]
    assert set(old) == (set(stale) | set(jit) | set(quant) | set(rank) | set(by_mean)
                        | {"levels_mean_region", "rank_hist_mean_region", "median_abs_z", "fits_chi2_worst",
                           "fits_chi2"})
    assert json.loads((folder / "case.json").read_text()) == old
    res = cal.run_case(job | {"rescore": True})
    own = sample_chi2(build_problem(folder / "obs.uvfits", ReconstructSettings())[2], samples)
    assert res["chi2_samples_median"] == pytest.approx({k: float(np.median(v)) for k, v in own.items()}, rel=1e-5)
    ring = summarize_ring(ring_samples(stored, cal.GEOM.fov_uas), [8, 8, 8])["diameter_uas"]
    assert res["diameter_median_uas"] == pytest.approx(ring["median"])
    assert res["diameter_interval68_uas"] == [pytest.approx(ring["lo68"]), pytest.approx(ring["hi68"])]
    assert ring["lo68"] < res["true_diameter_uas"] < ring["hi68"] and res["ring_diameter_in68"] is True
    # the truth plus the prior's jitter (draws seeded by the case), measured as the samples are
    from interfero.features import RingExtractor

    jrng = np.random.default_rng(job["seed"] + 1)
    jd = [RingExtractor(32, cal.GEOM.fov_uas)(truth + 1e-4 * jrng.standard_normal(truth.shape)).null_diameter
          for _ in range(calstats.JITTER_DRAWS)]
    for lv in ("68", "95"):
        expect = np.mean([(ring[f"lo{lv}"] <= x <= ring[f"hi{lv}"]) for x in jd])
        assert res[f"ring_diameter_jittered_in{lv}"] == pytest.approx(expect)
    assert res["seconds"] == 30.0 and res["fit_seconds"] == 12.0  # the pixel scores from the samples' intervals
    assert res["coverage_68"] == pytest.approx(np.mean((truth[region] >= bounds["0.68"][0][region])
                                                       & (truth[region] <= bounds["0.68"][1][region])))
    assert res["coverage_jittered_68"] == pytest.approx(jit["coverage_jittered_68"])
    assert res["median_abs_z"] == pytest.approx(z, rel=1e-5) and res["fits_chi2_worst"] == 3.0
    assert res["fits_chi2"] == old["fits_chi2"]
    assert json.loads((folder / "case.json").read_text()) == json.loads(json.dumps(res))


def test_calibration_refuses_a_case_another_live_run_holds(tmp_path):
    import os
    import subprocess

    cal = _calibration_script()
    lock = tmp_path / "running.pid"
    lock.write_text(str(os.getppid()))  # a live process (pytest's parent) holds the case
    with pytest.raises(InterferoError, match=rf"being run by process {os.getppid()}: one calibration run per --out"):
        with cal.case_claim(tmp_path):
            pass
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(str(dead.pid))  # left by a process that died: taken over, and released after
    with cal.case_claim(tmp_path):
        assert lock.read_text() == str(os.getpid())
    assert not lock.exists()


def test_calibration_aggregate_pools_pixels_by_weight_and_lists_ring_diameters(tmp_path):
    levels = {"0.68": 0.5, "0.95": 0.9}
    base = {"set": "in_distribution", "array": "EHT2017", "levels": levels, "rank_hist": [1, 2], "nxcorr_blur10": 0.9,
            "seconds": 10.0, "fit_seconds": 8.0, "true_diameter_uas": 40.0}
    cases = [base | {"case": 0, "coverage_68": 0.5, "coverage_95": 0.9, "coverage_pixels": 10,
                     "coverage_jittered_68": 0.4, "coverage_jittered_95": 0.8,
                     "ring_diameter_in68": True, "ring_diameter_in95": True, "diameter_median_uas": 41.0,
                     "diameter_interval68_uas": [39.0, 43.0], "chi2_cphase": 1.0, "chi2_logcamp": 1.2,
                     "chi2_samples_median": {"cphase": 2.0, "logcamp": 1.5},
                     "coverage_quantiles_68": 0.3, "coverage_quantiles_95": 0.6, "loglik_rank": 1.0,
                     "loglik_excess": 300.0, "coverage_mean_region_68": 0.6, "coverage_mean_region_95": 0.9,
                     "coverage_mean_region_pixels": 40, "ring_diameter_jittered_in68": 0.75,
                     "levels_mean_region": {"0.68": 0.6, "0.95": 0.9}, "rank_hist_mean_region": [3, 1],
                     "ring_diameter_jittered_in95": 1.0, "median_abs_z": 0.5},
             base | {"case": 1, "coverage_68": 0.8, "coverage_95": 1.0, "coverage_pixels": 30,
                     "coverage_jittered_68": 0.6, "coverage_jittered_95": 1.0,
                     "ring_diameter_in68": False, "ring_diameter_in95": True, "diameter_median_uas": 35.0,
                     "diameter_interval68_uas": [33.0, 37.0], "chi2_cphase": 1.4, "chi2_logcamp": 1.0,
                     "chi2_samples_median": {"cphase": 3.0, "logcamp": 2.5},
                     "coverage_quantiles_68": 0.7, "coverage_quantiles_95": 0.8, "loglik_rank": 0.25,
                     "loglik_excess": -10.0, "coverage_mean_region_68": 0.7, "coverage_mean_region_95": 1.0,
                     "coverage_mean_region_pixels": 60, "ring_diameter_jittered_in68": 0.25,
                     "levels_mean_region": {"0.68": 0.7, "0.95": 1.0}, "rank_hist_mean_region": [0, 5],
                     "ring_diameter_jittered_in95": 0.5, "median_abs_z": 1.5},
             {"case": 2, "set": "in_distribution", "array": "EHT2017", "error": "diverged", "seconds": 1.0}]
    r = calstats.aggregate(cases)
    assert r["n_cases"] == 2 and r["n_refused"] == 1
    assert r["coverage_68"] == pytest.approx((0.5 * 10 + 0.8 * 30) / 40)
    assert r["coverage_jittered_68"] == pytest.approx((0.4 * 10 + 0.6 * 30) / 40)
    assert r["coverage_jittered_95"] == pytest.approx((0.8 * 10 + 1.0 * 30) / 40)
    assert r["ring_diameter_coverage_68"] == 0.5 and r["ring_diameter_coverage_95"] == 1.0
    assert r["ring_diameters_uas"] == [[0, 40.0, 41.0, 39.0, 43.0], [1, 40.0, 35.0, 33.0, 37.0]]
    assert r["rank_hist"] == [2, 4]
    assert r["chi2_samples_median"] == {"cphase": 2.5, "logcamp": 2.0}
    assert r["chi2_mean_median"] == {"cphase": pytest.approx(1.2), "logcamp": pytest.approx(1.1)}
    assert r["coverage_quantiles_68"] == pytest.approx((0.3 * 10 + 0.7 * 30) / 40)
    assert r["coverage_quantiles_95"] == pytest.approx((0.6 * 10 + 0.8 * 30) / 40)
    assert r["loglik_rank_mean"] == pytest.approx(0.625) and r["loglik_excess_median"] == pytest.approx(145.0)
    assert r["loglik_rank_hist"] == [0, 0, 1, 0, 0, 0, 0, 0, 0, 1]
    assert r["coverage_mean_region_68"] == pytest.approx((0.6 * 40 + 0.7 * 60) / 100)  # by the mean's pixels
    assert r["coverage_mean_region_95"] == pytest.approx((0.9 * 40 + 1.0 * 60) / 100)
    assert r["ring_diameter_jittered_coverage_68"] == 0.5 and r["ring_diameter_jittered_coverage_95"] == 0.75
    assert r["reliability_mean_region"] == {"0.68": pytest.approx(0.66), "0.95": pytest.approx(0.96)}
    assert r["rank_hist_mean_region"] == [3, 6]
    assert r["median_abs_z"] == {"median": 1.0, "min": 0.5, "max": 1.5}
    assert "fit_seconds_by_device" not in r  # all fitted on one device (no "device" key: the CPU)
    assert "by_fit_convergence" not in r  # no case says how its fits ended
    assert "chi2_fits_median" not in r
    assert r["ring_diameter_misses_68"] | {"width_median_uas": None} == {  # case 1's 35 uas in [33, 37]: 40 is 3 out
        "n_cases": 2, "n_misses": 1, "near": 0, "far": 0, "small": 1, "near_uas": 2.0, "far_uas": 10.0,
        "width_median_uas": None}
    own = calstats.aggregate([cases[0] | {"fits_chi2": [{"mean": {"cphase": 1.1}, "samples": {"cphase": 2.6}}]},
                              cases[1]])["chi2_fits_median"]
    assert own["reached"] == own["all"] == {"n_fits": 1, "mean": {"cphase": 1.1}, "samples": {"cphase": 2.6}}
    split = calstats.aggregate([cases[0] | {"fits_chi2_worst": 1.3}, cases[1] | {"fits_chi2_worst": 4.0},
                                cases[0] | {"case": 3, "fits_chi2_worst": 2.0, "coverage_68": 0.9}])
    split = split["by_fit_convergence"]
    assert split["chi2_threshold"] == calstats.FIT_CHI2_STALLED == 2.0
    assert split["reached"] == {"n_cases": 2, "coverage_68": pytest.approx(0.7), "coverage_95": pytest.approx(0.9),
                                "ring_cases": 2, "ring_diameter_coverage_68": 1.0, "ring_diameter_coverage_95": 1.0}
    assert split["stalled"] == {"n_cases": 1, "coverage_68": 0.8, "coverage_95": 1.0, "ring_cases": 1,
                                "ring_diameter_coverage_68": 0.0, "ring_diameter_coverage_95": 1.0}
    mixed = calstats.aggregate([cases[0], cases[1] | {"device": "cuda", "fit_seconds": 2.0}])
    assert mixed["fit_seconds_by_device"] == {"cpu": {"n_cases": 1, "median": 8.0},
                                              "cuda": {"n_cases": 1, "median": 2.0}}
    # one hit of 2 (68%): Clopper-Pearson 90% range [1 - 0.95^(1/2), 0.95^(1/2)]; two of 2 (95%): [0.05^(1/2), 1]
    assert r["ring_diameter_coverage_68_interval"] == pytest.approx([1 - 0.95 ** 0.5, 0.95 ** 0.5])
    assert r["ring_diameter_coverage_95_interval"] == pytest.approx([0.05 ** 0.5, 1.0])
    png = tmp_path / "calibration.png"
    calstats.plot({"settings": {}, "in_distribution": {"EHT2017": r, "EHT2017-JCMT-PV-SPT": {"n_cases": 0}}}, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the figure of the pooled result, empty arrays skipped
    g = r["goal"]
    assert not g["met"] and g["n_required"] == 50  # 2 truths, and pixels 0.725 / 0.975 are within but ring 0.5 is not
    assert g["checks"]["pixels_68"]["within"] and g["checks"]["pixels_95"]["within"]
    assert not g["checks"]["ring_diameter_68"]["within"] and g["checks"]["ring_diameter_95"]["within"]
    assert g["checks"]["ring_diameter_68"]["nominal_in_range"]  # 1 of 2 says little: 0.68 is inside [0.03, 0.97]
    assert g["checks"]["pixels_68"]["nominal_in_range"]  # two cases resampled: from 0.5 to 0.8
    v = calstats.goal_verdict({"n_cases": 60, "coverage_68": 0.66, "coverage_68_interval": [0.61, 0.70],
                          "coverage_95": 0.89, "coverage_95_interval": [0.86, 0.92], "ring_cases": 60,
                          "ring_diameter_coverage_68": 0.70, "ring_diameter_coverage_68_interval": [0.59, 0.79],
                          "ring_diameter_coverage_95": 0.95, "ring_diameter_coverage_95_interval": [0.88, 0.98]})
    assert not v["met"] and [k for k, c in v["checks"].items() if not c["within"]] == ["pixels_95"]
    assert [k for k, c in v["checks"].items() if not c["nominal_in_range"]] == ["pixels_95"]
    assert calstats.goal_verdict({"n_cases": 60, "coverage_68": 0.66, "coverage_95": 0.93, "ring_cases": 60,
                             "ring_diameter_coverage_68": 0.70, "ring_diameter_coverage_95": 0.95})["met"]
    # 2 calibrated ring cases: the rate is 0, 0.5 or 1, never within 5 points of 0.68; 2 of 2 hits at 95%: 0.95^2
    assert g["checks"]["ring_diameter_68"]["calibrated_pass_chance"] == 0.0
    assert g["checks"]["ring_diameter_95"]["calibrated_pass_chance"] == pytest.approx(0.95 ** 2)


def test_worst_fit_chi2_reads_every_fit_and_product():
    members = [{"seed": 1, "chi2_cphase": 1.1, "chi2_logcamp": 1.3, "chi2_samples_median": {"cphase": 9.0}},
               {"seed": 2, "chi2_cphase": 3.5, "chi2_logcamp": 1.0, "bound": 40.0}]
    # the pooled mean's own chi^2 (5.0) mixes the fits: the members' are read where there are members
    assert calstats.worst_fit_chi2({"chi2_cphase": 5.0, "ensemble_members": members}) == 3.5
    assert calstats.worst_fit_chi2({"chi2_cphase": 1.2, "chi2_amp": 2.5, "chi2_samples": {"cphase": {}}}) == 2.5
    assert calstats.worst_fit_chi2({"chi2_cphase": 1.2, "ensemble_members": [{"seed": 1}]}) is None  # not recorded


def test_fit_chi2s_pairs_each_fits_mean_with_its_own_samples():
    members = [{"seed": 1, "chi2_cphase": 1.1, "chi2_logcamp": 1.3, "chi2_samples_median": {"cphase": 3.0,
                                                                                          "logcamp": 2.0}},
               {"seed": 2, "chi2_cphase": 3.5, "chi2_logcamp": 1.0, "chi2_samples_median": {"cphase": 5.0,
                                                                                          "logcamp": 1.5}}]
    fits = calstats.fit_chi2s({"chi2_cphase": 5.0, "ensemble_members": members})
    assert fits == [{"mean": {"cphase": 1.1, "logcamp": 1.3}, "samples": {"cphase": 3.0, "logcamp": 2.0}},
                    {"mean": {"cphase": 3.5, "logcamp": 1.0}, "samples": {"cphase": 5.0, "logcamp": 1.5}}]
    one = {"chi2_cphase": 1.2, "chi2_samples": {"cphase": {"median": 1.9, "p10": 1.0, "p90": 3.0}}}
    assert calstats.fit_chi2s(one) == [{"mean": {"cphase": 1.2}, "samples": {"cphase": 1.9}}]
    assert calstats.fit_chi2s({"chi2_cphase": 1.2}) is None  # the samples' fit not recorded
    assert calstats.fit_chi2s({"ensemble_members": [{"seed": 1, "chi2_samples_median": {"cphase": 2.0}}]}) is None
    third = {"mean": {"cphase": 1.5, "logcamp": 1.9}, "samples": {"cphase": 2.0, "logcamp": 4.0}}
    r = calstats.fits_data_fit([{"fits_chi2": fits}, {"fits_chi2": [third]}, {"fits_chi2": None}])
    assert r["chi2_threshold"] == calstats.FIT_CHI2_STALLED
    assert r["all"] == {"n_fits": 3, "mean": {"cphase": 1.5, "logcamp": 1.3},
                        "samples": {"cphase": 3.0, "logcamp": 2.0}}
    # the second fit's mean is at 3.5 on closure phases: it did not reach the data
    assert r["reached"] == {"n_fits": 2, "mean": {"cphase": pytest.approx(1.3), "logcamp": pytest.approx(1.6)},
                            "samples": {"cphase": 2.5, "logcamp": 3.0}}
    assert calstats.fits_data_fit([{"case": 0}]) is None


def test_ring_misses_sorts_them_by_how_far_the_truth_falls_outside():
    rows = [[0, 40.0, 41.0, 39.0, 43.0],  # a hit, interval 4 uas wide
            [1, 47.4, 46.2, 45.4, 47.0],  # 0.4 uas above its interval: near, the median small
            [2, 78.6, 37.1, 32.3, 42.7],  # 35.9 uas above: far, small
            [3, 30.0, 35.0, 33.0, 34.5],  # 3 uas below: neither near nor far, the median large
            [4, 50.0, None, None, None]]  # no interval: not counted
    r = calstats.ring_misses(rows)
    assert {k: r[k] for k in ("n_cases", "n_misses", "near", "far", "small")} == {
        "n_cases": 4, "n_misses": 3, "near": 1, "far": 1, "small": 2}
    assert (r["near_uas"], r["far_uas"]) == (calstats.RING_MISS_NEAR_UAS, calstats.RING_MISS_FAR_UAS) == (2.0, 10.0)
    assert r["width_median_uas"] == {"hits": pytest.approx(4.0), "misses": pytest.approx(1.6)}
    assert calstats.ring_misses(rows[:1])["width_median_uas"] == {"hits": pytest.approx(4.0), "misses": None}
    assert calstats.ring_misses(rows[4:]) is None and calstats.ring_misses([]) is None


def test_calibrated_pass_chance_is_the_binomial_mass_within_five_points():
    """Against direct enumeration: 50 truths at 68% pass with k in 32..36 (rates 0.64-0.72); many truths
    almost always pass."""
    from math import comb

    direct = sum(comb(50, k) * 0.68 ** k * 0.32 ** (50 - k) for k in range(32, 37))
    assert calstats.calibrated_pass_chance(50, 0.68) == pytest.approx(direct, rel=1e-9)
    assert calstats.calibrated_pass_chance(2000, 0.68) > 0.999


@pytest.mark.parametrize("half", [0.5, 1.0, 2.0])
def test_jittered_coverage_matches_the_normal_law(half):
    """Intervals +-half around the truth hold the truth plus N(0, 1) jitter with probability erf(half / sqrt 2)."""
    import math

    truth = np.linspace(0, 1, 100 * 100).reshape(100, 100)
    region = truth >= 0.1
    bounds = {"0.68": (truth - half, truth + half), "0.95": (truth - 2 * half, truth + 2 * half)}
    cov = calstats.jittered_coverage(bounds, truth, region, 1.0, seed=3)
    assert cov["coverage_jittered_68"] == pytest.approx(math.erf(half / math.sqrt(2)), abs=0.004)
    assert cov["coverage_jittered_95"] == pytest.approx(math.erf(2 * half / math.sqrt(2)), abs=0.004)


def test_calibration_reports_the_finished_cases_before_running_any(tmp_path):
    """A rerun holds every finished case at once, also those its case-by-case order reaches late (case 1 of
    EHT2017 after the unfinished case 0 of EHT2017-SPT); ``--rescore`` runs them all anew."""
    import argparse
    import json

    cal = _calibration_script()
    args = argparse.Namespace(seed=7, steps=10, prior_method="elbo", elbo_draws=1, batch=4, lr=2e-3, samples=8,
                              device="cpu",
                              warm_start="flow",
                              alpha=1.0, flow_base="diagonal", flow_basis="pixel", laplace_start="pooled", ensemble=1,
                              rescore=False, method="pnp-dm", method_options={"rho_min": "0.02"},
                              jitter=0.001,
                              out=str(tmp_path))
    jobs = cal.case_jobs({"in_distribution": np.zeros((2, 2, 2))}, ["EHT2017", "EHT2017-SPT"], args)
    for i in (0, 1):
        folder = tmp_path / "in_distribution" / "EHT2017" / f"case_{i:03d}"
        folder.mkdir(parents=True)
        (folder / "case.json").write_text(json.dumps({"case": i, "array": "EHT2017", "coverage_68": 0.5 + i / 4}
                                                     | dict.fromkeys(cal.ADDED_SCORES, 0.4)))
    results, todo = cal.finished_cases(jobs)
    assert [(r["case"], r["coverage_68"]) for r in results] == [(0, 0.5), (1, 0.75)]
    assert [(j["case"], j["array"]) for j in todo] == [(0, "EHT2017-SPT"), (1, "EHT2017-SPT")]
    assert cal.finished_cases(jobs, rescore=True) == ([], jobs)


def _linear_gaussian_problem(small_obs):
    """Complex visibilities of 8x8 images (the small observation's uv points and sigmas) as a real linear
    model ``y = A x + n``: ``A`` (2M, 64), per-component noise std ``sigma`` (2M,)."""
    import torch

    from interfero.io import ImageGeometry
    from interfero.operators.closure import InterferometryOperator

    geom = ImageGeometry(8, 160.0)
    op = InterferometryOperator(small_obs, geom, products=("vis",))
    with torch.no_grad():
        a = op.vis_op(torch.eye(64, dtype=torch.float64).reshape(64, 1, 8, 8)).numpy().T  # (M, 64) complex
    sigma = np.concatenate([small_obs.sigma, small_obs.sigma])
    return geom, np.concatenate([a.real, a.imag]), sigma


def test_sample_chi2_of_exact_gaussian_posterior_samples_matches_the_closed_form(small_obs):
    """Linear model, Gaussian prior and noise: per-sample reduced chi^2 of exact posterior draws against
    its closed form given the data, ``(|y - A m|^2_W + tr(W A S A^T)) / 2M``; averaged over data drawn
    from the model that is 1 (the truth's), while the mean's is ``(2M - p) / 2M``, ``p = tr(W A S A^T)``."""
    from dataclasses import replace

    import torch

    from interfero.operators.closure import InterferometryOperator
    from posterior.metrics import reduced_chi2, sample_chi2, summarize_sample_chi2

    s0 = 0.02  # Jy/pixel prior std: some pixel combinations measured, others left to the prior
    geom, a, sigma = _linear_gaussian_problem(small_obs)
    w = 1.0 / sigma**2
    cov = np.linalg.inv(np.eye(64) / s0**2 + a.T @ (w[:, None] * a))
    p = float(np.trace((w[:, None] * a) @ cov @ a.T))
    m2 = a.shape[0]
    assert 10 < p < 54  # neither prior- nor data-dominated
    rng = np.random.default_rng(3)
    # the closed form averaged over data drawn from the model is 1 (no sampling involved)
    forms = []
    for _ in range(400):
        x = s0 * rng.standard_normal(64)
        y = a @ x + sigma * rng.standard_normal(m2)
        mean = cov @ (a.T @ (w * y))
        forms.append((np.sum(w * (y - a @ mean) ** 2) + p) / m2)
    assert np.mean(forms) == pytest.approx(1.0, abs=0.01)
    # one data set: exact posterior draws scored by sample_chi2 against the closed form
    x = s0 * rng.standard_normal(64)
    y = a @ x + sigma * rng.standard_normal(m2)
    mean = cov @ (a.T @ (w * y))
    draws = mean + rng.standard_normal((4000, 64)) @ np.linalg.cholesky(cov).T
    m = m2 // 2
    obs = replace(small_obs, vis=y[:m] + 1j * y[m:])
    op = InterferometryOperator(obs, geom, products=("vis",))
    chi = sample_chi2(op, draws.reshape(4000, 1, 8, 8))["vis"]
    expected = (np.sum(w * (y - a @ mean) ** 2) + p) / m2
    assert chi.mean() == pytest.approx(expected, rel=0.01)
    assert chi.mean() > 1.3 * np.sum(w * (y - a @ mean) ** 2) / m2  # the samples fit worse than their mean
    one = reduced_chi2(op, torch.tensor(draws[7].reshape(1, 1, 8, 8)))["chi2_vis"]
    assert chi[7] == pytest.approx(one, rel=1e-5)
    summ = summarize_sample_chi2({"vis": chi})["vis"]
    assert summ["p10"] < summ["median"] < summ["p90"]
    assert summ["median"] == pytest.approx(np.median(chi))


def test_truth_loglik_rank_is_uniform_for_exact_posterior_draws_and_near_one_for_wide_ones(small_obs):
    """Simulation-based calibration of the data fit: truths drawn from a Gaussian prior, data from each truth,
    exact posterior draws (closed form): the truth's log-likelihood rank among the draws' is uniform over the
    truths and its excess over their median centred near 0; draws from a posterior four times too wide put the
    truth above nearly all of them. The rank is checked against the closed-form Gaussian log-likelihood."""
    from dataclasses import replace

    from scipy import stats

    from interfero.operators.closure import InterferometryOperator
    from posterior.metrics import truth_loglik_rank

    s0 = 0.02
    geom, a, sigma = _linear_gaussian_problem(small_obs)
    w = 1.0 / sigma**2
    cov = np.linalg.inv(np.eye(64) / s0**2 + a.T @ (w[:, None] * a))
    chol = np.linalg.cholesky(cov)
    m = a.shape[0] // 2
    rng = np.random.default_rng(11)
    exact, wide, excess = [], [], []
    for i in range(200):
        x = s0 * rng.standard_normal(64)
        y = a @ x + sigma * rng.standard_normal(2 * m)
        mean = cov @ (a.T @ (w * y))
        z = rng.standard_normal((64, 64))
        op = InterferometryOperator(replace(small_obs, vis=y[:m] + 1j * y[m:]), geom, products=("vis",))
        r = truth_loglik_rank(op, (mean + z @ chol.T).reshape(64, 1, 8, 8), x.reshape(8, 8))
        exact.append(r["truth_loglik_rank"])
        excess.append(r["truth_loglik_excess"])
        wide.append(truth_loglik_rank(op, (mean + 2 * z @ chol.T).reshape(64, 1, 8, 8), x)["truth_loglik_rank"])
        if i == 0:  # against the closed form: log p(y | x) = -|y - A x|^2_W / 2 + const
            lls = [-0.5 * np.sum(w * (y - a @ v) ** 2) for v in [x, *(mean + z @ chol.T)]]
            assert r["truth_loglik_rank"] == np.mean(np.array(lls[1:]) < lls[0])
            assert r["truth_loglik_excess"] == pytest.approx(lls[0] - np.median(lls[1:]), abs=1e-3)  # float32
    assert np.mean(exact) == pytest.approx(0.5, abs=0.05)
    assert stats.kstest(exact, "uniform").pvalue > 0.01
    assert abs(np.median(excess)) < 0.25 * np.std(excess)
    assert np.mean(wide) > 0.9


def test_truth_loglik_rank_bad_input(small_obs):
    from interfero.io import ImageGeometry
    from interfero.operators.closure import InterferometryOperator
    from posterior.metrics import truth_loglik_rank

    op = InterferometryOperator(small_obs, ImageGeometry(8, 160.0), products=("vis",))
    with pytest.raises(InterferoError, match="no samples to score"):
        truth_loglik_rank(op, np.zeros((0, 1, 8, 8)), np.zeros((8, 8)))
    with pytest.raises(InterferoError, match="NaN or infinite"):
        truth_loglik_rank(op, np.zeros((2, 1, 8, 8)), np.full((8, 8), np.nan))


@pytest.mark.parametrize("flag", [["--lr", "0"], ["--lr", "nan"], ["--steps", "0"], ["--device", "cuda:99"]])
def test_calibration_refuses_bad_settings_in_one_line(tmp_path, flag):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "calibration.py"
    r = subprocess.run([sys.executable, str(script), "--n", "1", "--json", str(tmp_path / "c.json"),
                        "--out", str(tmp_path / "out"), *flag], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert flag[0] in r.stderr and not (tmp_path / "out").exists() and not (tmp_path / "c.json").exists()


def test_calibration_stopped_by_sigterm_stops_its_workers(tmp_path):
    """A plain ``kill`` of a running calibration ends its worker processes too, in one line, status 130."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "calibration.py"
    proc = subprocess.Popen([sys.executable, str(script), "--n", "1", "--jobs", "2", "--sets", "in_distribution",
                             "--arrays", "EHT2017,EHT2017-JCMT-PV-SPT", "--json", str(tmp_path / "c.json"),
                             "--out", str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})

    def children() -> set[int]:
        kids = set()
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            if f"\nPPid:\t{proc.pid}\n" in text:
                kids.add(int(status.parent.name))
        return kids

    deadline = time.monotonic() + 240
    while (not list((tmp_path / "out").rglob("obs.uvfits")) and proc.poll() is None
           and time.monotonic() < deadline):  # until the cases run
        time.sleep(0.5)
    workers = children()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "calibration: interrupted", err[-2000:]
    assert len(workers) >= 2
    time.sleep(1)
    alive = {pid for pid in workers if Path(f"/proc/{pid}").exists()
             and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()}
    assert not alive, f"workers {alive} still running"


def test_calibration_prior_draws_are_the_default_priors_reproducible_draws():
    """The diagnostic set: the default prior's own draws of p_eps, seeded, the same whatever --n, on the
    calibration grid, with fluxes near its training law's range and p_eps's pixel jitter kept."""
    from priors.datasets.blackholes import flux_range

    cal = _calibration_script()
    a = cal.truths("prior_draws", 1, 5, "disk-lnflux")
    t = cal.truths("prior_draws", 2 * cal.DRAW_BATCH, 5, "disk-lnflux")  # two batches: seeds 5 and 6
    assert a.shape == (1, 32, 32) and t.shape == (8, 32, 32) and a.dtype == np.float64
    # seeded, and a truth does not depend on --n (a grown run keeps its finished cases' truths)
    np.testing.assert_allclose(t[:1], a, rtol=0, atol=1e-6)
    assert np.abs(t[cal.DRAW_BATCH] - t[0]).max() > 1e-3  # the next batch: other images
    lo, hi = flux_range("disk-lnflux")
    fluxes = t.sum((1, 2))
    # the trained prior's draws, not its training law's: near the law's flux range, not strictly inside it
    # (with these seeds 2 of 8 fall below its 0.49 Jy, at 0.33 and 0.44 Jy)
    assert np.all((fluxes > lo / 2) & (fluxes < 2 * hi)) and lo < np.median(fluxes) < hi
    # the draws keep p_eps's white jitter: the darkest tenth of the pixels scatter about zero by ~eps_std
    dark = np.sort(a.ravel())[:100]
    assert dark.min() < 0 and 3e-4 < np.std(dark) < 3e-3
    assert "prior_draws" not in cal.DEFAULT_SETS
