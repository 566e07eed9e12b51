"""Posterior summaries shared by every inference method: samples, mean, std, credible intervals."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from interfero.errors import InterferoError


@dataclass
class Posterior:
    """Samples of ``p(x | y)`` and their per-pixel summaries (same units as the images).

    ``lo68/hi68`` and ``lo95/hi95``: equal-tailed 68% and 95% intervals per pixel.
    ``diagnostics``: method, settings, loss history, timings (JSON-able).
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

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])


def summarize(samples: np.ndarray, log_q: np.ndarray | None = None, diagnostics: dict | None = None) -> Posterior:
    """Summaries of ``samples`` ``(N, ...)`` (N >= 2, finite)."""
    samples = np.asarray(samples)
    if samples.ndim < 2 or samples.shape[0] < 2:
        raise InterferoError("a posterior summary needs at least 2 samples")
    if not np.all(np.isfinite(samples)):
        raise InterferoError("posterior samples contain NaN or infinite values")
    q = np.quantile(samples, [0.025, 0.16, 0.84, 0.975], axis=0)
    return Posterior(
        samples=samples, mean=samples.mean(0), std=samples.std(0, ddof=1), lo68=q[1], hi68=q[2], lo95=q[0],
        hi95=q[3], log_q=None if log_q is None else np.asarray(log_q), diagnostics=dict(diagnostics or {}),
    )


def point_estimate(x: np.ndarray, diagnostics: dict | None = None) -> Posterior:
    """A single image ``x`` ``(C, H, W)`` as a degenerate posterior (MAP, PnP-ADMM): one sample, zero std,
    every interval the point itself (so the truth is covered only where it equals it)."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise InterferoError("the estimate contains NaN or infinite values")
    z = np.zeros_like(x)
    return Posterior(samples=x[None], mean=x, std=z, lo68=x, hi68=x, lo95=x, hi95=x,
                     diagnostics=dict(diagnostics or {}) | {"point_estimate": True})
