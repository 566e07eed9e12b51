"""Posterior summaries shared by every inference method: samples, mean, std, credible intervals.

:func:`summarize` summarises one set of samples: its mean, std and equal-tailed quantile intervals.
The quantiles are the samples' predictive ones (:func:`sample_quantiles`): of N exchangeable draws, the
interval between the k-th smallest and the k-th largest holds one more draw of the same law (the truth,
if the samples are posterior draws) with probability ``(N + 1 - 2k) / (N + 1)``, so the level-``p``
quantile sits at rank ``p (N + 1)``. numpy's default (rank ``1 + p (N - 1)``) makes intervals that hold a
new draw less often than their level: 64% instead of 68% for 32 samples, 66% for 64.

:func:`summarize_fits` summarises the pooled samples of K >= 2 independent fits (``reconstruct
--ensemble``) by Rubin's rules for combining K analyses (Rubin 1987; Little & Rubin, *Statistical
Analysis with Missing Data*, ch. 5). Per pixel, with fit means ``m_k`` and within-fit variances ``v_k``:

    mean = (1/K) sum m_k,   W = (1/K) sum v_k,   B = sum (m_k - mean)^2 / (K - 1),
    T = W + (1 + 1/K) B,    nu = (K - 1) (1 + W / ((1 + 1/K) B))^2,

and the level-``L`` interval is ``mean +- t_nu((1 + L) / 2) sqrt(T)`` (Student t with ``nu`` degrees of
freedom; the normal when ``B = 0``). Why not the pooled samples' quantiles: when each fit is much
narrower than the spread between fits, the pooled samples are in effect K draws, and any interval
between their quantiles holds a new draw (the truth, if the fits are draws of the posterior) with
probability at most (K - 1) / (K + 1), 0.5 for K = 3, whatever its nominal level. The t interval
accounts for the finite K; the ``(1 + 1/K)`` term for the estimated mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from interfero.errors import InterferoError


@dataclass
class Posterior:
    """Samples of ``p(x | y)`` and their per-pixel summaries (same units as the images).

    ``lo68/hi68`` and ``lo95/hi95``: equal-tailed 68% and 95% intervals per pixel (:func:`sample_quantiles`).
    ``diagnostics``: method, settings, loss history, timings (JSON-able).
    ``fit_sizes``: for the pooled samples of independent fits (:func:`summarize_fits`), how many of the
    samples, in order, each fit gave; None for one fit.
    """

    samples: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    lo68: np.ndarray
    hi68: np.ndarray
    lo95: np.ndarray
    hi95: np.ndarray
    log_q: np.ndarray | None = None
    diagnostics: dict = field(default_factory=dict)
    fit_sizes: list[int] | None = None

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])


def sample_quantiles(values, probs, axis: int = 0) -> np.ndarray:
    """The level-``probs`` quantiles of ``values`` along ``axis`` at ranks ``p (N + 1)`` (Hyndman & Fan's
    type 6, numpy's ``"weibull"``; clipped to the smallest and largest value), so that equal-tailed
    intervals between them hold a new draw of the samples' law with their nominal probability."""
    return np.quantile(values, probs, axis=axis, method="weibull")


def summarize(samples: np.ndarray, log_q: np.ndarray | None = None, diagnostics: dict | None = None) -> Posterior:
    """Summaries of ``samples`` ``(N, ...)`` (N >= 2, finite)."""
    samples = np.asarray(samples)
    if samples.ndim < 2 or samples.shape[0] < 2:
        raise InterferoError("a posterior summary needs at least 2 samples")
    if not np.all(np.isfinite(samples)):
        raise InterferoError("posterior samples contain NaN or infinite values")
    q = sample_quantiles(samples, [0.025, 0.16, 0.84, 0.975])
    return Posterior(
        samples=samples, mean=samples.mean(0), std=samples.std(0, ddof=1), lo68=q[1], hi68=q[2], lo95=q[0],
        hi95=q[3], log_q=None if log_q is None else np.asarray(log_q), diagnostics=dict(diagnostics or {}),
    )


def split_fits(samples: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """The samples of each fit from pooled ``samples`` ``(N, ...)`` and the fits' ``sizes`` (summing to N)."""
    sizes = [int(n) for n in sizes]
    if sum(sizes) != len(samples) or min(sizes) < 2:
        raise InterferoError(f"fit sizes {sizes} must each be >= 2 and add up to the {len(samples)} samples")
    return np.split(np.asarray(samples), np.cumsum(sizes)[:-1])


def fitted_samples(samples: np.ndarray, sizes: list[int], shifts: list) -> np.ndarray:
    """Pooled ``samples`` ``(N, ..., H, W)`` with each fit's moved back by its ``(dy, dx)`` shift (whole pixels,
    circular) to where it was fitted: the inverse of the alignment that pools an ensemble's fits
    (``posterior.reconstruct.pool_components``), for scoring the samples against their data."""
    return np.concatenate([np.roll(g, (int(sh[0]), int(sh[1])), axis=(-2, -1))
                           for g, sh in zip(split_fits(samples, sizes), shifts, strict=True)])


def combined_fits(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rubin's rules (module docstring) over K >= 2 fits' samples ``(n_k, ...)``: the combined mean, the total
    std ``sqrt(T)`` and the degrees of freedom ``nu`` (``inf`` where the fits agree), each of the samples'
    trailing shape."""
    k = len(groups)
    if k < 2:
        raise InterferoError(f"combining fits needs at least 2, got {k}")
    m, w, inflated = _rubin_terms(groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        nu = np.where(inflated > 0, (k - 1) * (1 + w / np.where(inflated > 0, inflated, 1.0)) ** 2, np.inf)
    return m.mean(0), np.sqrt(w + inflated), nu


def std_parts(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The two parts of Rubin's total variance ``T = W + (1 + 1/K) B`` over K >= 1 fits' samples ``(n_k, ...)``,
    as standard deviations of the samples' trailing shape: ``sqrt(W)``, the fits' own spread, and
    ``sqrt((1 + 1/K) B)``, the spread between their means (zeros for one fit). Their squares add up to the
    squared total std of :func:`combined_fits`."""
    _, w, inflated = _rubin_terms(groups)
    return np.sqrt(w), np.sqrt(inflated)


def _rubin_terms(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fits' means ``(K, ...)``, the within-fit variance ``W`` and the inflated between-fit variance
    ``(1 + 1/K) B`` (zeros for one fit)."""
    m = np.stack([np.mean(g, 0) for g in groups])
    w = np.mean([np.var(g, 0, ddof=1) for g in groups], 0)
    inflated = (1 + 1 / len(groups)) * m.var(0, ddof=1) if len(groups) > 1 else np.zeros_like(w)
    return m, w, inflated


def combined_interval(groups: list[np.ndarray], level: float) -> tuple[np.ndarray, np.ndarray]:
    """The equal-tailed ``level`` interval (0 < level < 1) of Rubin's rules over K >= 2 fits' samples."""
    if not 0 < level < 1:
        raise InterferoError(f"interval level must be in (0, 1), got {level}")
    return _t_interval(*combined_fits(groups), level)


def _t_interval(mean: np.ndarray, sd: np.ndarray, nu: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    half = stats.t.ppf(0.5 + level / 2, nu) * sd
    return mean - half, mean + half


def combined_cdf(groups: list[np.ndarray], value: np.ndarray) -> np.ndarray:
    """Where ``value`` falls in Rubin's combined distribution of K >= 2 fits (its t CDF, in [0, 1]): uniform
    over truths drawn from the posterior when the combination is calibrated (the rank histogram's analogue)."""
    mean, sd, nu = combined_fits(groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, (np.asarray(value) - mean) / np.where(sd > 0, sd, 1.0), 0.0)
    return stats.t.cdf(z, nu)


def summarize_fits(groups: list[np.ndarray], diagnostics: dict | None = None) -> Posterior:
    """The pooled samples of K >= 2 independent fits, summarised by Rubin's rules (module docstring): mean,
    total std ``sqrt(T)`` and t intervals. The samples are kept as they are, in the fits' order."""
    groups = [np.asarray(g) for g in groups]
    samples = np.concatenate(groups)
    if not np.all(np.isfinite(samples)):
        raise InterferoError("posterior samples contain NaN or infinite values")
    sizes = [len(g) for g in groups]
    if min(sizes) < 2:
        raise InterferoError(f"each fit needs at least 2 samples, got {sizes}")
    mean, sd, nu = combined_fits(groups)
    bounds = {lv: _t_interval(mean, sd, nu, lv) for lv in (0.68, 0.95)}
    return Posterior(samples=samples, mean=mean, std=sd, lo68=bounds[0.68][0], hi68=bounds[0.68][1],
                     lo95=bounds[0.95][0], hi95=bounds[0.95][1], diagnostics=dict(diagnostics or {}),
                     fit_sizes=sizes)


def point_estimate(x: np.ndarray, diagnostics: dict | None = None) -> Posterior:
    """A single image ``x`` ``(C, H, W)`` as a degenerate posterior (MAP, PnP-ADMM): one sample, zero std,
    every interval the point itself (so the truth is covered only where it equals it)."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise InterferoError("the estimate contains NaN or infinite values")
    z = np.zeros_like(x)
    return Posterior(samples=x[None], mean=x, std=z, lo68=x, hi68=x, lo95=x, hi95=x,
                     diagnostics=dict(diagnostics or {}) | {"point_estimate": True})
