"""Linear-Gaussian restoration problems with exact posteriors, for checking every method (``validate_samplers``).

The prior is the 16x16 face-fitted Gaussian (:func:`priors.datasets.faces.face_gaussian`); the tasks
are denoising, deblurring and random inpainting with white Gaussian noise. The posterior is Gaussian in
closed form (:func:`posterior.dpi.exact_gaussian_posterior`). :func:`compare` scores a method's
samples: the median relative error of the per-pixel mean and std, and the Gaussian KL divergence
``KL(N(m_hat, C_hat) || N(m, C))`` of the samples' moments against the exact posterior, with the KL of as
many exact draws beside it (the floor that finite samples alone give).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from interfero.operators import Denoising, GaussianBlur, GaussianNoise, random_inpainting

from .dpi import exact_gaussian_posterior
from .problem import InverseProblem
from .summary import Posterior
from .validation import operator_matrix

TASKS = {  # task -> (operator builder, noise std in image units)
    "denoise": (lambda shape, n: Denoising(shape, n), 0.2),
    "deblur": (lambda shape, n: GaussianBlur(shape, 1.0, n), 0.05),
    "random_inpaint": (lambda shape, n: random_inpainting(shape, 0.5, seed=0, noise=n), 0.05),
}


@dataclass
class ExactProblem:
    problem: InverseProblem
    mean: np.ndarray  # (D,) exact posterior mean
    cov: np.ndarray  # (D, D)
    x_true: np.ndarray

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov))


def exact_problem(task: str, prior, gaussian, seed: int = 0) -> ExactProblem:
    """``task`` on a draw of ``gaussian`` (the face Gaussian), solved with ``prior`` (its analytic score or
    a trained one, or the Gaussian itself)."""
    build, sigma = TASKS[task]
    shape = gaussian.image_shape
    op = build(shape, GaussianNoise(sigma))
    g = torch.Generator().manual_seed(seed)
    x = gaussian.sample(1, generator=g).float()
    y = op.sample(x, generator=g)
    a = operator_matrix(op, shape)
    m, c = exact_gaussian_posterior(a, sigma, y.reshape(-1).double().numpy(), gaussian.mean.reshape(-1).numpy(),
                                    gaussian.cov.numpy())
    return ExactProblem(InverseProblem(op, y, prior), m, c, x.reshape(-1).double().numpy())


def gaussian_kl(m1: np.ndarray, c1: np.ndarray, m2: np.ndarray, c2: np.ndarray) -> float:
    """``KL(N(m1, c1) || N(m2, c2))`` in nats."""
    d = m1.size
    l2 = np.linalg.cholesky(c2)
    c2inv_c1 = np.linalg.solve(c2, c1)
    r = np.linalg.solve(l2, m1 - m2)
    sign, logdet1 = np.linalg.slogdet(c1)
    if sign <= 0:
        return math.inf
    logdet2 = 2 * np.log(np.diag(l2)).sum()
    return float(0.5 * (np.trace(c2inv_c1) + r @ r - d + logdet2 - logdet1))


def compare(post: Posterior, exact: ExactProblem, seed: int = 0) -> dict:
    """Scores of ``post`` against the exact posterior (see the module docstring)."""
    m = post.mean.reshape(-1)
    s = post.std.reshape(-1)
    out = {"mean_rel_err": float(np.median(np.abs(m - exact.mean) / np.abs(exact.mean))),
           "std_rel_err": float(np.median(np.abs(s - exact.std) / exact.std)),
           "n_samples": post.n_samples, "seconds": post.diagnostics.get("seconds")}
    n, d = post.n_samples, m.size
    if n > d:
        x = post.samples.reshape(n, -1)
        out["kl"] = gaussian_kl(m, np.cov(x, rowvar=False), exact.mean, exact.cov)
        rng = np.random.default_rng(seed)
        ref = rng.multivariate_normal(exact.mean, exact.cov, size=n)
        out["kl_exact_draws"] = gaussian_kl(ref.mean(0), np.cov(ref, rowvar=False), exact.mean, exact.cov)
    else:
        out["kl"] = None  # a point estimate, or fewer samples than pixels: no covariance
    return out
