"""The evidence lower bound of a score model: a cheap surrogate of ``log p``.

For the forward SDE ``dx = f dt + g dw`` with kernel ``x_t = alpha x + std z``
and a score model ``s(x, t) = -eps_theta(x, t) / std(t)``, the denoising form
of the likelihood bound of Song, Durkan, Murray & Ermon (2021, Theorem 1),
written for the data at ``eps``, is::

    log p_eps(x) >= E_z[log pi(x_T)] + int_eps^T div f dt
                    + 1/2 int_eps^T g^2 / std^2 ( D - E_z |eps_theta(x_t, t) - z|^2 ) dt

(``D`` pixels; ``E|z|^2 = D`` is used in closed form, which removes most of
the Monte Carlo variance at small ``t``).

``E[log pi(x_T)]`` and ``int div f`` are closed forms. The last integral is
estimated by Monte Carlo with ``K`` draws of ``(t, z)`` per image, ``t``
importance-sampled from ``q(t) ~ g(t)^2 / std(t)^2`` (the integrand's
weight; tabulated inverse CDF), or uniform. The bound is tight when the
score model is exact and ``p_T = pi``; it is differentiable in ``x``
(reparameterised), with a cost of ``K`` network calls per image.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from interfero.errors import InterferoError

from .sde import SDE, _bcast


class TimeSampler:
    """Draws ``t`` in ``[eps, T]`` with density ``q(t) = w(t) / Z``, ``w = g^2 / std^2`` (or uniform)."""

    def __init__(self, sde: SDE, importance: bool = True, n_grid: int = 4001) -> None:
        self.sde, self.importance = sde, importance
        t = torch.from_numpy(np.geomspace(sde.eps, sde.T, n_grid))
        self.t = t
        w = self.weight(t)
        cdf = torch.cat([torch.zeros(1, dtype=t.dtype), torch.cumsum(0.5 * (w[1:] + w[:-1]) * torch.diff(t), 0)])
        self.Z = float(cdf[-1])
        self.cdf = cdf / cdf[-1]
        # int_eps^T (0.5 w(t) + div f(t) / D) dt: the deterministic part of the bound, per pixel
        h = 0.5 * w - 0.5 * sde.drift_rate(t)
        self.deterministic_per_pixel = float(torch.sum(0.5 * (h[1:] + h[:-1]) * torch.diff(t)))

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        _, std = self.sde.coefficients(t)
        return self.sde.diffusion(t) ** 2 / std**2

    def sample(self, n: int, generator=None, dtype=torch.float32, device=None,
               strata: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``t`` ``(n,)`` and the factor ``w(t) / q(t)`` turning the integrand into an unbiased estimate.

        ``strata > 1``: ``n = strata * m`` draws, the ``k``-th block of ``m`` in the ``k``-th of
        ``strata`` equal-probability intervals of ``q`` (stratified sampling).
        """
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        if strata > 1:
            k = torch.arange(strata, dtype=torch.float64).repeat_interleave(n // strata)
            u = (k + u) / strata
        if self.importance:
            idx = torch.searchsorted(self.cdf, u).clamp(1, len(self.cdf) - 1)
            c0, c1 = self.cdf[idx - 1], self.cdf[idx]
            t0, t1 = self.t[idx - 1], self.t[idx]
            t = t0 + (u - c0) / (c1 - c0).clamp_min(1e-300) * (t1 - t0)
            factor = torch.full_like(t, self.Z)
        else:
            t = self.sde.eps + (self.sde.T - self.sde.eps) * u
            factor = (self.sde.T - self.sde.eps) * self.weight(t)
        return t.to(dtype=dtype, device=device), factor.to(dtype=dtype, device=device)


def expected_prior_logp(sde: SDE, x: torch.Tensor) -> torch.Tensor:
    """``E_z[log pi(alpha_T x + std_T z)]`` in closed form, ``(B,)``."""
    alpha, std = sde.coefficients(torch.tensor(sde.T, dtype=torch.float64))
    d = x[0].numel()
    s2 = sde.prior_std**2
    sq = x.reshape(x.shape[0], -1).pow(2).sum(-1)
    return -0.5 * d * math.log(2 * math.pi * s2) - (float(alpha) ** 2 * sq + d * float(std) ** 2) / (2 * s2)


def elbo(
    noise_fn,
    sde: SDE,
    x: torch.Tensor,
    draws: int = 8,
    importance: bool = True,
    generator: torch.Generator | None = None,
    sampler: TimeSampler | None = None,
) -> torch.Tensor:
    """Monte Carlo ELBO ``(B,)`` of ``log p_eps(x)``; ``noise_fn(x_t, t)`` predicts ``z`` (``-std * score``).

    Differentiable in ``x``; ``draws`` (t, z) pairs per image.
    """
    if draws < 1:
        raise InterferoError("the ELBO needs at least one draw per image")
    if not torch.all(torch.isfinite(x)):
        raise InterferoError("ELBO of an image with NaN or infinite pixels")
    sampler = sampler or TimeSampler(sde, importance)
    b, d = x.shape[0], x[0].numel()
    xr = x.unsqueeze(0).expand(draws, *x.shape).reshape(draws * b, *x.shape[1:])
    t, factor = sampler.sample(draws * b, generator, x.dtype, x.device, strata=draws)
    z = torch.randn(xr.shape, generator=generator, dtype=x.dtype).to(x.device)
    alpha, std = sde.coefficients(t)
    xt = _bcast(alpha, xr) * xr + _bcast(std, xr) * z
    err = (noise_fn(xt, t) - z).pow(2).reshape(draws * b, -1).sum(-1)
    # The deterministic part int (0.5 w D + div f) dt is a quadrature; only the denoising error is
    # estimated by Monte Carlo, with t stratified over the draws of each image.
    integrand = -0.5 * factor * err
    return expected_prior_logp(sde, x) + d * sampler.deterministic_per_pixel + integrand.reshape(draws, b).mean(0)
