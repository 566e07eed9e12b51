"""Plug-and-play ADMM (Venkatakrishnan et al. 2013) with the score prior's MMSE denoiser.

Splits ``min_x -log p(y | x) - log p(x)`` as ``x = v`` and alternates, for a penalty ``rho_k``:

- data step ``x = argmin -log p(y | x) + rho_k / 2 ||x - (v - u)||^2``: exact for a linear operator with
  Gaussian noise (conjugate gradients on ``A^T W A + rho_k I``, ``W = 1 / sigma^2``), else
  ``grad_steps`` Adam steps from the current ``x``;
- prior step ``v = D(x + u, sigma_k)``, the denoiser of :meth:`priors.score_prior.ScorePrior.denoise`
  at ``sigma_k = rho_k^-1/2`` (the proximal map of ``-log p`` with weight ``1 / rho_k`` is a
  denoising problem at that noise level);
- ``u = u + x - v``.

``sigma_k`` decreases geometrically from ``sigma_start`` to ``sigma_end`` (both in units of the
prior's scale) over ``iterations``. The result is a point estimate (:func:`summary.point_estimate`):
PnP-ADMM has no samples and no uncertainty.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from interfero.errors import InterferoError
from interfero.operators import GaussianNoise, LinearOperator

from .problem import InverseProblem
from .runs import check_count, check_finite, check_positive
from .summary import Posterior, point_estimate


@dataclass
class PnPADMMConfig:
    """iterations: ADMM iterations; sigma_start / sigma_end: the denoiser's noise level at the first and last
    iteration (prior-scale units); cg_iters: conjugate-gradient iterations of an exact data step;
    grad_steps / grad_lr: Adam steps and step size (image units) of an inexact data step; seed."""

    iterations: int = 60
    sigma_start: float = 0.5
    sigma_end: float = 0.02
    cg_iters: int = 50
    grad_steps: int = 20
    grad_lr: float = 0.01
    seed: int = 0

    def validate(self) -> None:
        check_count("PnP-ADMM iterations", self.iterations)
        check_positive("PnP-ADMM sigma_start", self.sigma_start)
        check_positive("PnP-ADMM sigma_end", self.sigma_end)
        if self.sigma_end > self.sigma_start:
            raise InterferoError(f"PnP-ADMM needs sigma_end <= sigma_start, got {self.sigma_end} > {self.sigma_start}")
        check_count("PnP-ADMM cg_iters", self.cg_iters)
        check_count("PnP-ADMM grad_steps", self.grad_steps)
        check_positive("PnP-ADMM grad_lr", self.grad_lr)


def conjugate_gradient(matvec, b: torch.Tensor, x0: torch.Tensor, iters: int, tol: float = 1e-10) -> torch.Tensor:
    """Solves ``M x = b`` for a symmetric positive-definite ``matvec`` (one system per batch item)."""
    def dot(a, c):
        return (a * c).reshape(a.shape[0], -1).sum(-1).reshape(-1, *[1] * (a.ndim - 1))

    x = x0.clone()
    r = b - matvec(x)
    p = r.clone()
    rr = dot(r, r)
    b2 = dot(b, b).clamp_min(1e-300)
    for _ in range(iters):
        if bool(torch.all(rr <= tol**2 * b2)):
            break
        mp = matvec(p)
        a = rr / dot(p, mp).clamp_min(1e-300)
        x = x + a * p
        r = r - a * mp
        rr_new = dot(r, r)
        p = r + (rr_new / rr.clamp_min(1e-300)) * p
        rr = rr_new
    return x


def _exact_data_step(op: LinearOperator, y, w: torch.Tensor, rho: float, target: torch.Tensor, x0, iters: int):
    b = op.adjoint(w * y) + rho * target
    return conjugate_gradient(lambda x: op.adjoint(w * op(x)) + rho * x, b, x0, iters)


def pnp_admm(problem: InverseProblem, config: PnPADMMConfig | None = None, progress: bool = False) -> Posterior:
    """The PnP-ADMM estimate of ``problem`` (its prior must be a score prior) as a point posterior."""
    cfg = config or PnPADMMConfig()
    cfg.validate()
    prior = problem.score_prior("pnp-admm")
    op = problem.operator
    exact = isinstance(op, LinearOperator) and isinstance(op.noise, GaussianNoise)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    x = problem.initial_image()[:1].double()
    v, u = x.clone(), torch.zeros_like(x)
    y = problem.y.double() if isinstance(problem.y, torch.Tensor) else problem.y
    w = 1.0 / op.noise.sigma.double() ** 2 if exact else None
    sig = torch.logspace(math.log10(cfg.sigma_start), math.log10(cfg.sigma_end), cfg.iterations,
                         dtype=torch.float64) * prior.scale
    for k in range(cfg.iterations):
        rho = float(1.0 / sig[k] ** 2)
        target = v - u
        if exact:
            x = _exact_data_step(op, y, w, rho, target, x, cfg.cg_iters)
        else:
            xg = x.detach().float().requires_grad_(True)
            opt = torch.optim.Adam([xg], lr=cfg.grad_lr)
            tf = target.float()
            for _ in range(cfg.grad_steps):
                opt.zero_grad()
                loss = -problem.log_likelihood(xg).sum() + 0.5 * rho * ((xg - tf) ** 2).sum()
                loss.backward()
                opt.step()
            x = xg.detach().double()
        with torch.no_grad():
            v = prior.denoise((x + u).float(), float(sig[k])).double()
        u = u + x - v
        check_finite(v, "pnp-admm", k)
    seconds = time.perf_counter() - t0
    diag = {"method": "pnp-admm", "config": asdict(cfg), "exact_data_step": exact, "seconds": seconds,
            "seconds_per_sample": seconds}
    return point_estimate(v[0].numpy(), diag)
