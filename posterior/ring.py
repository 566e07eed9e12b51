"""Ring-feature posteriors: the ring extractor (:mod:`interfero.features`) on every posterior sample.

The science questions of black-hole imaging are asked of features, not pixels:
the ring's diameter, width, orientation and brightness asymmetry. Measuring
them on each posterior sample gives their posterior, summarised here as the
median and equal-tailed 68% / 95% intervals:

- ``diameter_uas``: the ring diameter interferometric data measure, the diameter of
  the thin ring with the same first visibility null as the sample's azimuthally
  averaged profile (``RingFeatures.null_diameter``). It does not depend on the
  resolution, and it is the quantity geometric model fits (such as EHT 2019
  Paper VI's 42 +- 3 uas for M87) report;
- ``peak_diameter_uas``: the image-domain (REx) diameter, twice the mean radius of
  the brightness peak; at an array's resolution the peak sits inside the
  emission ring, and the shape of the prior's radial profiles moves it
  (docs/results.md: a 42 uas crescent observed like M87 gives 37.5 uas);
- ``width_uas`` (FWHM), ``x0_uas`` / ``y0_uas`` (centre, east / north of
  the image centre), ``asymmetry`` (``|m1| / m0`` along the ring);
- ``pa_deg`` (position angle of the brightest side, degrees east of north) is
  circular: its samples are unwrapped around their circular mean before the
  quantiles, so an interval across north stays narrow (e.g. 340-370 deg, not
  10-350); the samples' circular mean is in [0, 360), the bounds may not be.

The pooled samples of several independent fits (``reconstruct --ensemble``) are summarised instead by
Rubin's rules over the fits (:mod:`posterior.summary`): ``median`` is then the combined mean and the
bounds the t intervals, for the diameters and the width on the log scale (so that, like the quantiles
of one fit, they stay positive: fits that disagree widely give a wide interval, not a negative bound).

Samples whose extraction fails (no positive flux) are counted in ``n_failed``;
a feature that is undefined on a sample (no visibility null, no finite width) leaves
that sample out of that feature's summary, whose ``n`` says how many it used.
"""

from __future__ import annotations

import numpy as np

from interfero.errors import InterferoError
from interfero.features import RingExtractor

from .summary import combined_interval, sample_quantiles, split_fits

QUANTILES = {"lo95": 0.025, "lo68": 0.16, "median": 0.5, "hi68": 0.84, "hi95": 0.975}
POSITIVE = ("diameter_uas", "peak_diameter_uas", "width_uas")  # combined over fits on the log scale
FEATURES = {"diameter_uas": "null_diameter", "peak_diameter_uas": "diameter", "width_uas": "width",
            "pa_deg": "pa", "asymmetry": "asymmetry", "x0_uas": "x0", "y0_uas": "y0"}


def _unwrap_degrees(a: np.ndarray, around: np.ndarray | None = None) -> np.ndarray:
    """Angles (deg) moved by multiples of 360 into the half-turn around the circular mean of ``around``
    (default: of themselves)."""
    ref = a if around is None else around
    mean = np.degrees(np.angle(np.mean(np.exp(1j * np.radians(ref))))) % 360.0
    return mean + (a - mean + 180.0) % 360.0 - 180.0


def interval_summary(values: np.ndarray) -> dict[str, float]:
    """Median and equal-tailed 68% / 95% bounds of a sample (:func:`posterior.summary.sample_quantiles`), and
    its size ``n``."""
    q = sample_quantiles(values, list(QUANTILES.values()))
    return {k: float(v) for k, v in zip(QUANTILES, q)} | {"n": int(len(values))}


def ring_samples(images: np.ndarray, fov_uas: float) -> dict[str, np.ndarray]:
    """Features of each image ``(N, H, W)`` (or ``(N, 1, H, W)``) as arrays keyed as :data:`FEATURES`;
    failed extractions are NaN."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 4:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise InterferoError(f"ring features need square images (N, H, W), got {images.shape}")
    ex = RingExtractor(images.shape[-1], fov_uas)
    out = {k: np.full(len(images), np.nan) for k in FEATURES}
    for i, img in enumerate(images):
        try:
            f = ex(img)
        except InterferoError:
            continue
        for k, attr in FEATURES.items():
            out[k][i] = getattr(f, attr)
    return out


def ring_posterior(images: np.ndarray, fov_uas: float, fit_sizes: list[int] | None = None) -> dict:
    """``{"diameter_uas": {"median", "lo68", "hi68", "lo95", "hi95"}, "width_uas": ..., "pa_deg": ...,
    "asymmetry": ..., "x0_uas": ..., "y0_uas": ..., "n_samples", "n_failed"}`` from posterior samples
    (with ``fit_sizes``: the pooled samples of independent fits, combined as :func:`summarize_ring` does)."""
    return summarize_ring(ring_samples(images, fov_uas), fit_sizes)


def fits_summary(groups: list[np.ndarray]) -> dict[str, float]:
    """:func:`interval_summary` of K >= 2 independent fits' values by Rubin's rules (``median``: the combined
    mean)."""
    lo68, hi68 = combined_interval(groups, 0.68)
    lo95, hi95 = combined_interval(groups, 0.95)
    return {"lo95": float(lo95), "lo68": float(lo68), "median": float(np.mean([g.mean() for g in groups])),
            "hi68": float(hi68), "hi95": float(hi95), "n": int(sum(len(g) for g in groups))}


def summarize_ring(feats: dict[str, np.ndarray], fit_sizes: list[int] | None = None) -> dict:
    """:func:`ring_posterior` of features already measured (:func:`ring_samples`); with ``fit_sizes`` (the
    samples are the pooled draws of independent fits, in order) combined over the fits by Rubin's rules,
    using the fits on which the feature is defined on at least 2 samples (at least 2 such fits)."""
    extracted = np.isfinite(feats["x0_uas"])
    n = len(extracted)
    out: dict = {}
    for k, v in feats.items():
        ok = np.isfinite(v)
        if ok.sum() < 2:
            raise InterferoError(f"ring extraction failed: {k} is undefined on {n - ok.sum()} of {n} samples")
        if k == "pa_deg":  # NaN stays NaN
            v = _unwrap_degrees(v, around=v[ok])
        groups = [] if fit_sizes is None else [g[np.isfinite(g)] for g in split_fits(v, fit_sizes)]
        groups = [g for g in groups if len(g) >= 2]
        if len(groups) < 2:
            out[k] = interval_summary(v[ok])
        elif k in POSITIVE and all(np.all(g > 0) for g in groups):
            logs = fits_summary([np.log(g) for g in groups])
            out[k] = {q: (float(np.exp(x)) if q != "n" else x) for q, x in logs.items()}
        else:
            out[k] = fits_summary(groups)
    out["n_samples"] = int(extracted.sum())
    out["n_failed"] = int((~extracted).sum())
    return out


def ring_coverage(images: np.ndarray, fov_uas: float, truth: dict[str, float]) -> dict[str, dict[str, bool]]:
    """Whether each true feature value (``truth`` keyed as :data:`FEATURES`) lies in the 68% / 95% intervals
    of the ring posterior of ``images``."""
    return feature_coverage(ring_posterior(images, fov_uas), truth)


def feature_coverage(post: dict, truth: dict[str, float]) -> dict[str, dict[str, bool]]:
    """:func:`ring_coverage` of a ring posterior already summarised (:func:`summarize_ring`, the ``ring`` of
    ``metrics.json``)."""
    out = {}
    for k, t in truth.items():
        s = post[k]
        if k == "pa_deg":  # bring the truth to the samples' branch
            t = s["median"] + (t - s["median"] + 180.0) % 360.0 - 180.0
        out[k] = {"in68": bool(s["lo68"] <= t <= s["hi68"]), "in95": bool(s["lo95"] <= t <= s["hi95"])}
    return out
