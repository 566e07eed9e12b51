"""Calibration statistics over many reconstructed truths (simulation-based calibration).

Per case: the coverage of the truth by the per-pixel intervals at several levels (as ``reconstruct`` makes
them: Rubin's rules over an ensemble's fits), of the truth plus the prior's jitter, of the pooled samples'
own quantiles and over the pixels the posterior mean picks; the rank histogram of the truth in each pixel's
distribution; the ring diameter's coverage for the jittered truth. Over cases: pooled coverage with its
case-resampling range, the exact binomial range of the ring's hit rate, the goal verdict (68% and 95%
within ``GOAL_WITHIN`` of nominal on at least ``GOAL_TRUTHS`` truths, pixels and ring diameter) and the
figure. ``scripts/calibration.py`` runs the cases and writes these per test set and array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from interfero.errors import InterferoError
from interfero.features import RingExtractor
from posterior.metrics import aligned_truth, interval_coverage, posterior_region
from posterior.summary import combined_cdf, combined_interval, sample_quantiles, split_fits

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.68, 0.8, 0.9, 0.95)  # of the reliability diagram
RANK_BINS = 20
LOGLIK_BINS = 10  # of the histogram of the truth's log-likelihood rank over cases
JITTER_DRAWS = 20  # draws of the prior's jitter added to each truth (coverage_jittered_68/95)
GOAL_TRUTHS = 50  # the calibration goal: this many truths, 68% and 95% coverage each within GOAL_WITHIN of nominal
GOAL_WITHIN = 0.05
RING_MISS_NEAR_UAS = 2.0  # a ring-diameter miss by at most this is "near" (ring_misses); by more than
RING_MISS_FAR_UAS = 10.0  # this, "far"
FIT_CHI2_STALLED = 2.0  # a fit whose mean's reduced chi^2 on a data product exceeds this has not reached the data


def worst_fit_chi2(metrics: dict) -> float | None:
    """The largest reduced chi^2 of any fit's own mean on any data product, from a reconstruction's
    ``metrics.json``: over ``ensemble_members`` for an ensemble, else of the one fit's mean (a fit that stalls far
    from the data shows here, where the pooled mean's chi^2 mixes it with the others). None where the metrics
    do not record them."""
    fits = metrics.get("ensemble_members") or [metrics]
    vals = [v for f in fits for k, v in f.items() if k.startswith("chi2_") and isinstance(v, (int, float))]
    return float(max(vals)) if vals else None


def fit_chi2s(metrics: dict) -> list[dict] | None:
    """Each fit's own data fit, from a reconstruction's ``metrics.json``: per fit (``ensemble_members``, else the
    one fit) ``{"mean": {product: reduced chi^2 of its own mean}, "samples": {product: median over its own
    samples}}``. For an exact posterior of a linear model with Gaussian noise a sample's expected chi^2 exceeds
    its mean's by the number of data-constrained directions, at most the number of data: by at most 1 in reduced
    chi^2. None where the metrics do not record both."""
    if metrics.get("ensemble_members"):
        fits = [(f, f.get("chi2_samples_median")) for f in metrics["ensemble_members"]]
    else:
        fits = [(metrics, {k: v["median"] for k, v in metrics["chi2_samples"].items()}
                 if "chi2_samples" in metrics else None)]
    out = []
    for f, samples in fits:
        if not samples or any(not isinstance(f.get(f"chi2_{k}"), (int, float)) for k in samples):
            return None
        out.append({"mean": {k: float(f[f"chi2_{k}"]) for k in samples},
                    "samples": {k: float(v) for k, v in samples.items()}})
    return out


def fits_data_fit(cases: list[dict]) -> dict | None:
    """Medians over every fit of every case (``fit_chi2s``) of its own mean's and its own samples' reduced
    chi^2 per product, over all fits and over those whose mean reached the data (reduced chi^2 <=
    :data:`FIT_CHI2_STALLED` on every product): whether samples that fit the data worse than the truth do so
    within each fit (too wide where the data measure the image) or only between fits. None without records."""
    fits = [f for c in cases for f in (c.get("fits_chi2") or [])]
    if not fits:
        return None
    out: dict = {"chi2_threshold": FIT_CHI2_STALLED}
    for name, part in (("all", fits), ("reached", [f for f in fits
                                                   if max(f["mean"].values()) <= FIT_CHI2_STALLED])):
        out[name] = {"n_fits": len(part)} | ({
            what: {k: float(np.median([f[what][k] for f in part])) for k in part[0][what]}
            for what in ("mean", "samples")} if part else {})
    return out


def ring_misses(rows: list[list], near_uas: float = RING_MISS_NEAR_UAS,
                far_uas: float = RING_MISS_FAR_UAS) -> dict | None:
    """How the ring-diameter 68% intervals miss, from ``ring_diameters_uas`` rows ``[case, truth, median, lo68,
    hi68]`` (uas): ``n_misses`` of ``n_cases``; ``near``: misses by at most ``near_uas`` (under half a 5 uas pixel:
    an interval too narrow about the right size), ``far``: by more than ``far_uas`` (the fits on another
    ring size); ``small``: misses with the median below the truth; the intervals' median width (uas) over the hits
    and over the misses. None without a row with an interval."""
    d = np.array([r[1:5] for r in rows if None not in r[1:5]], dtype=float).reshape(-1, 4)
    d = d[np.isfinite(d).all(1)]
    if not len(d):
        return None
    truth, med, lo, hi = d.T
    gap = np.maximum(lo - truth, truth - hi)  # > 0: outside, by this much
    miss = gap > 0
    width = hi - lo
    return {"n_cases": len(d), "n_misses": int(miss.sum()), "near": int((miss & (gap <= near_uas)).sum()),
            "far": int((gap > far_uas).sum()), "small": int((miss & (med < truth)).sum()),
            "near_uas": near_uas, "far_uas": far_uas,
            "width_median_uas": {"hits": float(np.median(width[~miss])) if (~miss).any() else None,
                                 "misses": float(np.median(width[miss])) if miss.any() else None}}


def pooled_rates(cases: list[dict]) -> dict:
    """Pixel coverage pooled over the cases' source pixels (weighted by their number) and the ring diameter's
    hit rate over the cases with a ring interval (None without one)."""
    w = np.array([c["coverage_pixels"] for c in cases], dtype=float)
    ring = [c for c in cases if "ring_diameter_in68" in c]
    out = {f"coverage_{lv}": float(np.average([c[f"coverage_{lv}"] for c in cases], weights=w)) for lv in ("68", "95")}
    out |= {f"ring_diameter_coverage_{lv}": float(np.mean([c[f"ring_diameter_in{lv}"] for c in ring])) if ring else None
            for lv in ("68", "95")}
    return out | {"ring_cases": len(ring)}


def by_fit_convergence(cases: list[dict]) -> dict:
    """:func:`pooled_rates` of the cases whose fits all reached the data (every fit's mean at reduced chi^2 <=
    :data:`FIT_CHI2_STALLED` on every product: ``reached``) and of those where one stalled (``stalled``):
    whether the intervals miss because a fit did not converge or because converged fits agree on the wrong
    image."""
    known = [c for c in cases if c.get("fits_chi2_worst") is not None]
    out: dict = {"chi2_threshold": FIT_CHI2_STALLED}
    for name, part in (("reached", [c for c in known if c["fits_chi2_worst"] <= FIT_CHI2_STALLED]),
                       ("stalled", [c for c in known if c["fits_chi2_worst"] > FIT_CHI2_STALLED])):
        out[name] = {"n_cases": len(part)} | (pooled_rates(part) if part else {})
    return out


def rank_histogram(samples: np.ndarray, sizes: list[int] | None, aligned: np.ndarray,
                   region: np.ndarray) -> list[int]:
    """The histogram (``RANK_BINS`` bins over [0, 1]) of the aligned truth's place in each ``region`` pixel's
    distribution: for an ensemble its t CDF under Rubin's rules, as reconstruct makes its intervals, else the
    fraction of the samples below it. Flat when the intervals are calibrated over these pixels."""
    if sizes:
        ranks = combined_cdf([g[:, region] for g in split_fits(samples, sizes)], aligned[region])
    else:
        ranks = (samples[:, region] < aligned[region][None]).mean(0)
    return np.histogram(ranks, bins=RANK_BINS, range=(0, 1))[0].tolist()


def case_intervals(samples: np.ndarray, sizes: list[int] | None, levels) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-pixel intervals at each level as reconstruct makes them: Rubin's rules over an ensemble's fits,
    else the samples' equal-tailed quantiles."""
    if sizes:
        groups = split_fits(samples, sizes)
        return {str(lv): combined_interval(groups, lv) for lv in levels}
    return {str(lv): tuple(sample_quantiles(samples, [0.5 - lv / 2, 0.5 + lv / 2])) for lv in levels}


def jittered_coverage(bounds: dict, aligned: np.ndarray, region: np.ndarray, jitter: float,
                      seed: int) -> dict[str, float]:
    """``coverage_jittered_68/95``: the fraction of the source pixels whose truth plus the prior's own jitter
    (``JITTER_DRAWS`` draws of ``N(0, jitter^2)`` per pixel, seeded by the case) falls inside the 68% / 95%
    intervals. The posterior is over images of the prior's density ``p_eps``, the training law smoothed by
    that jitter, so a calibrated one holds such truths at about the nominal rates (slightly less: the data
    were simulated from the clean truth) and the clean truth (``coverage_68/95``) more often, by the
    jitter's share of the interval widths. The two bracket the nominal rate. The ``prior_draws`` truths are
    draws of ``p_eps`` and carry the jitter already: their jobs add none (``jitter`` 0, the two coverages equal)."""
    rng = np.random.default_rng(seed)
    t = aligned[region][None] + jitter * rng.standard_normal((JITTER_DRAWS, int(region.sum())))
    return {f"coverage_jittered_{name}": float(((t >= bounds[lv][0][region]) & (t <= bounds[lv][1][region])).mean())
            for name, lv in (("68", "0.68"), ("95", "0.95"))}


def mean_region_coverage(bounds: dict, truth: np.ndarray, shift, samples: np.ndarray,
                         sizes: list[int] | None = None) -> dict:
    """``coverage_mean_region_68/95``: the coverage over the pixels where the posterior mean is at or above 10%
    of its peak (``coverage_mean_region_pixels`` of them), chosen from the data rather than the truth
    (:func:`posterior.metrics.posterior_region`: the rate an exact posterior's intervals hold on average), and
    ``levels_mean_region``, the same at every level of ``bounds`` (its reliability diagram), and
    ``rank_hist_mean_region``, the rank histogram over those pixels (:func:`rank_histogram`; ``sizes``: the fits'
    sample counts, None for one fit)."""
    region = posterior_region(samples.mean(0))
    cov = interval_coverage(bounds, truth, shift, region=region)
    return {"coverage_mean_region_68": cov["truth_coverage_0.68"],
            "coverage_mean_region_95": cov["truth_coverage_0.95"],
            "coverage_mean_region_pixels": cov["coverage_pixels"],
            "levels_mean_region": {lv: cov[f"truth_coverage_{lv}"] for lv in bounds},
            "rank_hist_mean_region": rank_histogram(samples, sizes, aligned_truth(truth, shift)[0], region)}


def jittered_diameter_coverage(d: dict, truth: np.ndarray, fov_uas: float, jitter: float, seed: int) -> dict:
    """``ring_diameter_jittered_in68/95``: the fraction of ``JITTER_DRAWS`` draws of the truth plus the prior's
    jitter (as :func:`jittered_coverage`, seeded by the case) whose ring diameter falls inside the case's 68% /
    95% interval ``d`` (``{"lo68", "hi68", "lo95", "hi95"}``, uas). The samples are images of ``p_eps`` and
    carry the jitter, which moves the extractor's null on some rings by several uas: the jittered truth is
    measured as they are. For ``prior_draws`` (no jitter added) it is the clean truth's in / out. ``truth``: the
    ``(npix, npix)`` image (Jy/pixel) over ``fov_uas``."""
    npix = truth.shape[-1]
    ex = RingExtractor(npix, fov_uas)
    rng = np.random.default_rng(seed + 1)  # not the pixels' draws
    diam = []
    for _ in range(JITTER_DRAWS if jitter > 0 else 1):
        try:
            diam.append(ex(truth + jitter * rng.standard_normal(truth.shape)).null_diameter)
        except InterferoError:  # no ring in this draw: it counts as outside
            diam.append(np.nan)
    diam = np.asarray(diam)
    return {f"ring_diameter_jittered_in{lv}": float(np.mean((diam >= d[f"lo{lv}"]) & (diam <= d[f"hi{lv}"])))
            for lv in ("68", "95")}


def quantile_coverage(samples: np.ndarray, aligned: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """``coverage_quantiles_68/95``: the coverage of the source pixels by the equal-tailed quantiles of all the
    samples pooled, the intervals of the mixture of the fits itself (for an ensemble, reconstruct's intervals
    are Rubin's t intervals instead, wider when the fits are few: ``coverage_68/95``)."""
    bounds, t = case_intervals(samples, None, (0.68, 0.95)), aligned[region]
    return {f"coverage_quantiles_{name}": float(((t >= bounds[lv][0][region]) & (t <= bounds[lv][1][region])).mean())
            for name, lv in (("68", "0.68"), ("95", "0.95"))}


def case_bootstrap(values: list[float], weights: np.ndarray, draws: int = 2000, seed: int = 0) -> list[float]:
    """The central 90% range of a pooled coverage when the cases are resampled with replacement: its
    uncertainty from the finite number of truths (a case's pixels are not independent of each other)."""
    rng = np.random.default_rng(seed)
    v = np.asarray(values, dtype=float)
    idx = rng.integers(0, len(v), size=(draws, len(v)))
    boot = (v[idx] * weights[idx]).sum(1) / weights[idx].sum(1)
    return [float(q) for q in np.quantile(boot, [0.05, 0.95])]


def aggregate(cases: list[dict]) -> dict:
    """Pooled coverage of one set and array (refused fits counted in ``n_refused``, not scored)."""
    refused = [c for c in cases if "error" in c]
    cases = [c for c in cases if "error" not in c]
    if not cases:
        return {"n_cases": 0, "n_refused": len(refused)}
    w = np.array([c["coverage_pixels"] for c in cases], dtype=float)
    ring = [c for c in cases if "ring_diameter_in68" in c]
    out = {"n_cases": len(cases), "n_refused": len(refused), **pooled_rates(cases),
           "ring_diameters_uas": [[c["case"], c["true_diameter_uas"], c["diameter_median_uas"],
                                   *c.get("diameter_interval68_uas", [None, None])] for c in ring],
           "coverage_jittered_68": float(np.average([c["coverage_jittered_68"] for c in cases], weights=w)),
           "coverage_jittered_95": float(np.average([c["coverage_jittered_95"] for c in cases], weights=w)),
           "coverage_68_interval": case_bootstrap([c["coverage_68"] for c in cases], w),
           "coverage_95_interval": case_bootstrap([c["coverage_95"] for c in cases], w),
           "reliability": {lv: float(np.average([c["levels"][lv] for c in cases], weights=w))
                           for lv in cases[0]["levels"]},
           "rank_hist": np.sum([c["rank_hist"] for c in cases], axis=0).tolist(),
           **binomial_ranges(ring),
           "median_nxcorr_blur10": float(np.median([c["nxcorr_blur10"] for c in cases])),
           "seconds_per_case": {"median": float(np.median([c["seconds"] for c in cases])),
                                "max": float(np.max([c["seconds"] for c in cases]))}}
    ranked = [c for c in cases if "loglik_rank" in c]
    if ranked:  # simulation-based calibration of the data fit: flat histogram, mean 0.5 when calibrated
        out["loglik_rank_mean"] = float(np.mean([c["loglik_rank"] for c in ranked]))
        out["loglik_rank_hist"] = np.histogram([c["loglik_rank"] for c in ranked], bins=LOGLIK_BINS,
                                               range=(0, 1))[0].tolist()
        out["loglik_excess_median"] = float(np.median([c["loglik_excess"] for c in ranked]))
    jring = [c for c in cases if "ring_diameter_jittered_in68" in c]
    if jring:  # the truth plus the prior's jitter, measured as the samples are
        for lv in ("68", "95"):
            out[f"ring_diameter_jittered_coverage_{lv}"] = float(np.mean([c[f"ring_diameter_jittered_in{lv}"]
                                                                          for c in jring]))
    chosen = [c for c in cases if "coverage_mean_region_68" in c]
    if chosen:  # pixels chosen from the data: an exact posterior's rate (posterior.metrics.posterior_region)
        wc = np.array([c["coverage_mean_region_pixels"] for c in chosen], dtype=float)
        for lv in ("68", "95"):
            vals = [c[f"coverage_mean_region_{lv}"] for c in chosen]
            out[f"coverage_mean_region_{lv}"] = float(np.average(vals, weights=wc))
            out[f"coverage_mean_region_{lv}_interval"] = case_bootstrap(vals, wc)
        if all("levels_mean_region" in c for c in chosen):
            out["reliability_mean_region"] = {
                lv: float(np.average([c["levels_mean_region"][lv] for c in chosen], weights=wc))
                for lv in chosen[0]["levels_mean_region"]}
        if all("rank_hist_mean_region" in c for c in chosen):
            out["rank_hist_mean_region"] = np.sum([c["rank_hist_mean_region"] for c in chosen], axis=0).tolist()
    quant = [c for c in cases if "coverage_quantiles_68" in c]
    if quant:
        wq = np.array([c["coverage_pixels"] for c in quant], dtype=float)
        for lv in ("68", "95"):
            out[f"coverage_quantiles_{lv}"] = float(np.average([c[f"coverage_quantiles_{lv}"] for c in quant],
                                                               weights=wq))
    fitted = [c for c in cases if "chi2_samples_median" in c]
    if fitted:  # the posterior samples' own data fit beside their mean's (a posterior predictive check)
        out["chi2_samples_median"] = {k: float(np.median([c["chi2_samples_median"][k] for c in fitted]))
                                      for k in fitted[0]["chi2_samples_median"]}
        out["chi2_mean_median"] = {k: float(np.median([c[f"chi2_{k}"] for c in fitted]))
                                   for k in fitted[0]["chi2_samples_median"]}
    scaled = [c["median_abs_z"] for c in cases if "median_abs_z" in c]
    if scaled:  # per case, |mean - truth| / std over the source pixels: 0.67 for calibrated Gaussian intervals
        out["median_abs_z"] = {"median": float(np.median(scaled)), "min": float(np.min(scaled)),
                               "max": float(np.max(scaled))}
    by_device: dict[str, list[float]] = {}  # the fits' own time, also across a resume, by device
    for c in cases:
        if "fit_seconds" in c:
            by_device.setdefault(c.get("device", "cpu"), []).append(c["fit_seconds"])
    fits = [t for times in by_device.values() for t in times]
    if fits:
        out["fit_seconds_per_case"] = {"median": float(np.median(fits)), "max": float(np.max(fits))}
    if len(by_device) > 1:  # cases fitted on a GPU and on the CPU: each device's own time
        out["fit_seconds_by_device"] = {d: {"n_cases": len(t), "median": float(np.median(t))}
                                        for d, t in sorted(by_device.items())}
    if any(c.get("fits_chi2_worst") is not None for c in cases):
        out["by_fit_convergence"] = by_fit_convergence(cases)
    missed = ring_misses(out["ring_diameters_uas"])
    if missed is not None:
        out["ring_diameter_misses_68"] = missed
    own = fits_data_fit(cases)
    if own is not None:
        out["chi2_fits_median"] = own
    out["goal"] = goal_verdict(out)
    return out


def binomial_ranges(ring: list[dict]) -> dict:
    """``ring_diameter_coverage_68/95_interval``: the exact (Clopper-Pearson) central 90% range of the rate of
    which the ring-diameter hits of the cases are draws: its uncertainty from the finite number of truths
    (beside the pixels' resampling ranges, also 90%)."""
    from scipy.stats import binomtest

    if not ring:
        return {}
    out = {}
    for lv in ("68", "95"):
        hits = int(sum(bool(c[f"ring_diameter_in{lv}"]) for c in ring))
        ci = binomtest(hits, len(ring)).proportion_ci(confidence_level=0.9, method="exact")
        out[f"ring_diameter_coverage_{lv}_interval"] = [float(ci.low), float(ci.high)]
    return out


def calibrated_pass_chance(n: int, level: float, within: float = GOAL_WITHIN) -> float:
    """The probability that ``n`` truths, each inside a calibrated ``level`` interval with probability ``level``
    independently, give a coverage within ``within`` of ``level``: how often the goal's test passes for a
    posterior that deserves it (the ring diameter's test; a case's pixels are not independent)."""
    from scipy.stats import binom

    k = np.arange(n + 1)
    ok = np.abs(k / n - level) <= within + 1e-12
    return float(binom.pmf(k[ok], n, level).sum())


def goal_verdict(r: dict) -> dict:
    """The calibration goal for one set and array: ``coverage_68/95`` (the truth's source pixels) and
    ``ring_diameter_coverage_68/95`` each within ``GOAL_WITHIN`` of nominal, on at least ``GOAL_TRUTHS`` truths
    (``met``). Each check gives its value, whether it is within, and whether the nominal rate lies inside its
    90% range over the finite test set (``nominal_in_range``: the case-resampling range of the pixels, the
    binomial one of the ring); the ring's also the chance that a calibrated posterior passes it with this many
    ring cases (:func:`calibrated_pass_chance`)."""
    checks = {}
    for name, key, ncases in (("pixels", "coverage", None), ("ring_diameter", "ring_diameter_coverage", "ring_cases")):
        for lv in ("68", "95"):
            value, nominal, span = r.get(f"{key}_{lv}"), int(lv) / 100, r.get(f"{key}_{lv}_interval")
            check = {"value": value, "nominal": nominal,
                     "within": value is not None and abs(value - nominal) <= GOAL_WITHIN + 1e-12,
                     "nominal_in_range": span is not None and span[0] <= nominal <= span[1]}
            if ncases and r.get(ncases):
                check["calibrated_pass_chance"] = calibrated_pass_chance(r[ncases], nominal)
            checks[f"{name}_{lv}"] = check
    return {"n_required": GOAL_TRUTHS, "within": GOAL_WITHIN, "checks": checks,
            "met": r["n_cases"] >= GOAL_TRUTHS and all(c["within"] for c in checks.values())}


def plot(result: dict, path: Path) -> None:
    """The calibration figure of a ``{set: {array: aggregate}}`` result (the script's JSON): reliability diagram,
    rank histograms (solid: the truth's pixels; dashed: the mean's) and each case's ring diameter against the
    truth's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from interfero.plotting import save_figure

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.8))
    a.plot([0, 1], [0, 1], "k:", lw=0.8)
    for s, per_array in result.items():
        if s == "settings":
            continue
        for arr, r in per_array.items():
            if not r.get("n_cases"):
                continue
            lv = sorted(r["reliability"], key=float)
            line = a.plot([float(x) for x in lv], [r["reliability"][x] for x in lv],
                          "o-", ms=3, label=f"{s}, {arr} (n={r['n_cases']})")[0]
            if "reliability_mean_region" in r:  # dashed: over the pixels the posterior mean picks
                a.plot([float(x) for x in lv], [r["reliability_mean_region"][x] for x in lv], "s--", ms=3,
                       color=line.get_color(), label=f"{s}, {arr}: the mean's pixels")
            h = np.asarray(r["rank_hist"], dtype=float)
            step = b.stairs(h / h.sum() * len(h), np.linspace(0, 1, len(h) + 1), label=f"{s}, {arr}")
            if "rank_hist_mean_region" in r:
                h = np.asarray(r["rank_hist_mean_region"], dtype=float)
                b.stairs(h / h.sum() * len(h), np.linspace(0, 1, len(h) + 1), ls="--", color=step.get_edgecolor(),
                         label=f"{s}, {arr}: the mean's pixels")
            d = np.array([row[1:] for row in r.get("ring_diameters_uas", []) if None not in row], dtype=float)
            if len(d):
                c.errorbar(d[:, 0], d[:, 1], yerr=[d[:, 1] - d[:, 2], d[:, 3] - d[:, 1]], fmt="o", ms=3, capsize=2,
                           label=f"{s}, {arr}")
    a.set_xlabel("nominal interval level")
    a.set_ylabel("fraction of source pixels inside")
    a.set_title("reliability of the per-pixel intervals")
    if a.get_legend_handles_labels()[0]:  # no case finished yet: no legend to draw
        a.legend(fontsize=7)
    b.axhline(1.0, color="k", ls=":", lw=0.8)
    b.set_xlabel("rank of the truth among the samples (ensemble: its t CDF, Rubin's rules)")
    b.set_ylabel("density (flat = calibrated)")
    b.set_title("rank histogram (source pixels; dashed: the mean's)")
    if b.get_legend_handles_labels()[0]:
        b.legend(fontsize=7)
    lim = c.get_xlim() + c.get_ylim()
    lo, hi = min(lim), max(lim)
    c.plot([lo, hi], [lo, hi], "k:", lw=0.8)
    c.set_xlabel("true ring diameter (visibility null, uas)")
    c.set_ylabel("posterior median and 68% interval (uas)")
    c.set_title("ring diameter per case")
    if c.get_legend_handles_labels()[0]:
        c.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
