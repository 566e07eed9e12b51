"""Posterior problems with known answers (paper Figures 4 and 5), shared by scripts and tests.

- :func:`gaussian_dft_problem`: the 16x16 face-Gaussian prior, the lowest
  frequencies of the orthonormal DFT measured with i.i.d. Gaussian noise; the
  posterior is Gaussian in closed form.
- :func:`mixture_toy_problem`: a 2-D two-mode Gaussian-mixture prior and one
  scalar linear measurement; the posterior is a two-mode mixture in closed
  form, evaluated on a grid for KL divergences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from interfero.operators import GaussianNoise, LowFrequencyDFT, MatrixOperator
from priors.classical import GaussianMixturePrior, GaussianPrior

from .dpi import exact_gaussian_posterior


@dataclass
class GaussianProblem:
    """``y = A x + n`` with ``x ~ N(prior)``; ``post_mean``/``post_cov`` exact (float64, flattened)."""

    operator: LowFrequencyDFT
    y: torch.Tensor
    prior: GaussianPrior
    x_true: torch.Tensor
    post_mean: np.ndarray
    post_cov: np.ndarray

    @property
    def post_std(self) -> np.ndarray:
        return np.sqrt(np.diag(self.post_cov))


def operator_matrix(op, shape) -> np.ndarray:
    """The dense matrix of a linear operator with real tensor measurements (applied to the unit images)."""
    d = math.prod(shape)
    basis = torch.eye(d, dtype=torch.float64).reshape(d, *shape)
    with torch.no_grad():
        return op(basis).reshape(d, -1).T.numpy()


def gaussian_dft_problem(npix: int = 16, fraction: float = 0.0625, sigma: float = 1.0, seed: int = 0,
                         prior: GaussianPrior | None = None) -> GaussianProblem:
    """The analytic check of paper Figure 5: keep ``fraction`` of the DFT frequencies (the lowest
    ``n x n``, ``n = round(npix sqrt(fraction))``) of a draw from the face-Gaussian prior."""
    if prior is None:
        from priors.datasets.faces import face_gaussian

        prior = face_gaussian(npix)
    shape = prior.image_shape
    n = max(1, round(npix * math.sqrt(fraction)))
    op = LowFrequencyDFT(shape, n=n, noise=GaussianNoise(sigma))
    g = torch.Generator().manual_seed(seed)
    x_true = prior.sample(1, generator=g)
    y = op.sample(x_true, generator=g)
    a = operator_matrix(op, shape)
    mean, cov = exact_gaussian_posterior(a, sigma, y.reshape(-1).numpy(), prior.mean.reshape(-1).numpy(),
                                         prior.cov.numpy())
    return GaussianProblem(op, y, prior, x_true, mean, cov)


@dataclass
class MixtureToy:
    """Two-mode prior on ``(1, 1, 2)`` images, ``y = a . x + n`` (paper Figure 4 setting)."""

    operator: MatrixOperator
    y: torch.Tensor
    prior: GaussianMixturePrior
    a: np.ndarray
    sigma: float

    def posterior_components(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact posterior mixture: weights ``(K,)``, means ``(K, 2)``, covariances ``(K, 2, 2)``."""
        a = self.a.reshape(1, -1)
        y = float(self.y.reshape(-1)[0])
        logw, means, covs = [], [], []
        for w, mu, s in zip(self.prior.weights.numpy(), self.prior.means.reshape(-1, 2).numpy(),
                            self.prior.stds.numpy()):
            cov0 = s**2 * np.eye(2)
            m, c = exact_gaussian_posterior(a, self.sigma, np.array([y]), mu, cov0)
            pred_var = float((a @ cov0 @ a.T)[0, 0]) + self.sigma**2  # evidence of the component
            resid = y - float((a @ mu)[0])
            logw.append(math.log(w) - 0.5 * resid**2 / pred_var - 0.5 * math.log(2 * math.pi * pred_var))
            means.append(m)
            covs.append(c)
        logw = np.array(logw)
        weights = np.exp(logw - logw.max())
        return weights / weights.sum(), np.array(means), np.array(covs)

    def log_posterior(self, pts: np.ndarray) -> np.ndarray:
        """Normalised ``log p(x | y)`` at points ``(N, 2)``."""
        weights, means, covs = self.posterior_components()
        out = []
        for w, m, c in zip(weights, means, covs):
            r = pts - m
            ic = np.linalg.inv(c)
            out.append(math.log(w) - 0.5 * np.einsum("ni,ij,nj->n", r, ic, r)
                       - 0.5 * math.log((2 * math.pi) ** 2 * np.linalg.det(c)))
        return np.logaddexp.reduce(np.array(out), axis=0)

    def mass_lower_left(self) -> float:
        """Exact posterior mass of ``x1 + x2 < 0`` (the lower-left mode's half-plane)."""
        from scipy.stats import norm

        weights, means, covs = self.posterior_components()
        e = np.array([1.0, 1.0])
        return float(sum(w * norm.cdf(-(e @ m) / math.sqrt(e @ c @ e)) for w, m, c in zip(weights, means, covs)))


def mixture_toy_problem(a=(-2.0, 1.7), sigma: float = 0.2, y: float = 0.3, std: float = 0.1,
                        centre: float = 0.5) -> MixtureToy:
    """Equal mixture of ``N((-c, -c), std^2 I)`` and ``N((c, c), std^2 I)``, one measurement ``y = a . x + n``."""
    means = torch.tensor([[-centre, -centre], [centre, centre]], dtype=torch.float64).reshape(2, 1, 1, 2)
    prior = GaussianMixturePrior([0.5, 0.5], means, [std, std])
    a = np.asarray(a, dtype=np.float64)
    op = MatrixOperator((1, 1, 2), a.reshape(1, 2), GaussianNoise(sigma))
    return MixtureToy(op, torch.tensor([[y]], dtype=torch.float64), prior, a, float(sigma))


def grid_kl(log_q, log_p, lim: float = 1.5, n: int = 301) -> float:
    """``KL(q || p)`` by quadrature on ``[-lim, lim]^2`` (``log_q``, ``log_p``: callables on ``(N, 2)`` points);
    ``q`` is renormalised on the grid (its mass outside is reported by the caller if needed)."""
    g = np.linspace(-lim, lim, n)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel()], -1)
    dA = (g[1] - g[0]) ** 2
    lq, lp = np.asarray(log_q(pts)), np.asarray(log_p(pts))
    q = np.exp(lq)
    mass = q.sum() * dA
    q = q / mass
    lq = lq - math.log(mass)
    keep = q > 0
    return float(np.sum(q[keep] * (lq[keep] - lp[keep])) * dA)
