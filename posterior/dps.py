"""Diffusion posterior sampling (DPS; Chung, Kim, Mccann, Klasky & Ye 2023).

Each run goes down a DDPM / DDIM time grid of the score prior; after every prior move the state
takes a step along the gradient, through the Tweedie denoiser, of the noise model's log-likelihood
at the denoised estimate:

    z_s = ddim_step(z_t, z0_hat(z_t), eta) + zeta_t * grad_{z_t} log p(y | x0_hat(z_t)),

with ``zeta_t = zeta s / sqrt(D)`` (``normalise=True``): ``D`` is the deviance
``-2 [log p(y | x0_hat) - log p_max]`` (``||y - A x0_hat||^2 / sigma^2`` for Gaussian noise) and
``s = sigma / ||A||`` the measurement noise as an image-noise level in the model's units
(:meth:`InverseProblem.likelihood_curvature`), so that the step is the paper's
``zeta grad ||y - A x0_hat||`` (residual in the model's units) for any noise model and image units.
``normalise=False``: ``zeta_t = zeta s^2``, the gradient of ``zeta ||y - A x0_hat||^2 / 2``. Any
operator and noise model work (Gaussian, Poisson, amplitudes, closure phases, log closure amplitudes):
only ``operator.log_likelihood`` is differentiated. The likelihood at the denoised mean is an
approximation of ``p(y | z_t)``, so DPS is not an exact posterior sampler even with an exact score;
``zeta`` is its hand-set weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interfero.errors import InterferoError
from priors.sampling import ddim_step, denoised, time_grid, tweedie_denoise

from .problem import InverseProblem
from .runs import check_count, check_finite, check_positive, sampled_posterior
from .summary import Posterior


@dataclass
class DPSConfig:
    """steps: time steps (geometric grid, T to eps); zeta: data step size; normalise: divide it by the
    residual norm (``sqrt`` of the deviance); eta: 1 = DDPM ancestral prior moves, 0 = deterministic
    DDIM; n_samples: independent runs, ``batch`` at a time; seed."""

    steps: int = 1000
    zeta: float = 1.0
    normalise: bool = True
    eta: float = 1.0
    n_samples: int = 64
    batch: int = 16
    seed: int = 0

    def validate(self) -> None:
        check_count("DPS steps", self.steps)
        check_positive("DPS step size zeta", self.zeta)
        if not 0 <= self.eta <= 1:
            raise InterferoError(f"DPS eta must be in [0, 1], got {self.eta}")
        check_count("number of samples", self.n_samples, 2)
        check_count("batch", self.batch)


def dps(problem: InverseProblem, config: DPSConfig | None = None, progress: bool = False) -> Posterior:
    """DPS posterior samples of ``problem`` (its prior must be a score prior)."""
    cfg = config or DPSConfig()
    cfg.validate()
    prior = problem.score_prior("dps")
    sde, score = prior.sde, prior.score_model
    saturated = problem.saturated_log_likelihood()
    noise_z = problem.noise_level() / prior.scale  # the measurement noise as an image-noise level, model units
    ts = time_grid(sde, cfg.steps)

    def draw(m: int, g: torch.Generator) -> torch.Tensor:
        z = sde.prior_sampling((m, *problem.image_shape), generator=g)
        for i in range(cfg.steps):
            t, s = ts[i], ts[i + 1]
            with torch.enable_grad():
                zg = z.detach().requires_grad_(True)
                z0 = denoised(score, sde, zg, t)
                ll = problem.log_likelihood(prior.from_z(z0))
                (grad,) = torch.autograd.grad(ll.sum(), zg)
            with torch.no_grad():
                noise = torch.randn(z.shape, generator=g, dtype=z.dtype) if cfg.eta > 0 else None
                z = ddim_step(z, z0.detach(), sde, t, s, cfg.eta, noise)
                if cfg.normalise:
                    dev = (-2 * (ll.detach() - saturated)).clamp_min(1e-12)
                    step = cfg.zeta * noise_z / dev.sqrt().reshape(-1, *[1] * (z.ndim - 1))
                else:
                    step = cfg.zeta * noise_z**2
                z = z + step * grad
            check_finite(z, "dps", i, float(t))
        return prior.from_z(tweedie_denoise(score, sde, z))

    return sampled_posterior("dps", cfg, draw, problem.image_shape, progress)
