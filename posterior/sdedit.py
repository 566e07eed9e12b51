"""SDEdit (Meng et al. 2022) as an inverse-problem baseline.

Start from the operator's pseudo-inverse of the data, diffuse it to time ``t0`` (draw
``z(t0) = alpha(t0) z + std(t0) n``), then run the prior's reverse SDE (Euler-Maruyama, geometric
grid) from ``t0`` to ``eps`` and finish with Tweedie's formula. The data enter only through the
starting image: small ``t0`` keeps its artefacts, large ``t0`` forgets the data (``t0 = T`` draws
from the prior). ``t0`` is the method's one hyperparameter. Data with a batch of ``B`` rows (one
data set per independent run) start each run of a batch of ``B`` from its own data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interfero.errors import InterferoError
from priors.sampling import reverse_sde, time_grid, tweedie_denoise
from priors.sde import _bcast

from .problem import InverseProblem
from .runs import check_count, check_finite, sampled_posterior
from .summary import Posterior


@dataclass
class SDEditConfig:
    """t0: the time the pseudo-inverse is diffused to, in (eps, T]; steps: reverse-SDE steps from t0;
    n_samples: independent runs, ``batch`` at a time; seed."""

    t0: float = 0.4
    steps: int = 500
    n_samples: int = 64
    batch: int = 64
    seed: int = 0

    def validate(self) -> None:
        if not (0 < self.t0 <= 1.0):
            raise InterferoError(f"SDEdit t0 must be in (0, T] = (0, 1], got {self.t0}")
        check_count("SDEdit steps", self.steps)
        check_count("number of samples", self.n_samples, 2)
        check_count("batch", self.batch)


def sdedit(problem: InverseProblem, config: SDEditConfig | None = None, progress: bool = False) -> Posterior:
    """SDEdit samples of ``problem`` (its prior must be a score prior)."""
    cfg = config or SDEditConfig()
    cfg.validate()
    prior = problem.score_prior("sdedit")
    sde, score = prior.sde, prior.score_model
    if not sde.eps < cfg.t0 <= sde.T:
        raise InterferoError(f"SDEdit t0 must be in ({sde.eps:g}, {sde.T:g}], got {cfg.t0}")
    z_init = prior.to_z(problem.initial_image())
    ts = time_grid(sde, cfg.steps, t_start=cfg.t0)
    alpha, std = sde.coefficients(ts[:1])

    if z_init.shape[0] not in (1, cfg.batch) or (z_init.shape[0] > 1 and cfg.n_samples % cfg.batch):
        raise InterferoError(f"SDEdit: {z_init.shape[0]} starting images need batches of that many runs")

    def draw(m: int, g: torch.Generator) -> torch.Tensor:
        z0 = z_init.expand(m, *problem.image_shape)
        z = _bcast(alpha, z0) * z0 + _bcast(std, z0) * torch.randn(z0.shape, generator=g)
        z = reverse_sde(score, sde, z, ts, generator=g, denoise=False,
                        callback=lambda i, t, x, _x0: check_finite(x, "sdedit", i, float(t)))
        return prior.from_z(tweedie_denoise(score, sde, z))

    return sampled_posterior("sdedit", cfg, draw, problem.image_shape, progress)
