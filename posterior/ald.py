"""Score-based annealed Langevin dynamics for inverse problems (Score-ALD; Jalal et al. 2021).

The score prior is used as a ladder of noise levels: at time ``t`` the variable ``u = z(t) / alpha(t)``
is the image (in the score model's units ``z``) plus white noise of std ``r = std(t) / alpha(t)``, with
score ``alpha(t) score(alpha(t) u, t)``. For ``levels`` values of ``r`` spaced geometrically from
``r(T)`` down to ``r(eps)``, ``steps_per_level`` Langevin steps of size ``lr * r^2`` follow

    grad_u log p_r(u) + w_r grad_u log p(y | x(u)),   w_r = 1 / (1 + gamma^2 (r scale)^2 lambda),

where ``lambda`` is the likelihood's largest curvature (:meth:`InverseProblem.likelihood_curvature`,
``||A||^2 / sigma^2`` for Gaussian noise of std ``sigma``) and ``scale`` the prior's. For Gaussian
noise this is the paper's data weight ``1 / (sigma^2 + gamma_r^2)``, with ``gamma_r = gamma r scale
||A||`` the level's image noise propagated to the measurements; it keeps the data step stable at
every level (``lr / gamma^2 < 2``). At the last level the weight is ~1
and the chain samples ``p_eps(x) p(y | x)``: with enough steps ALD is an exact posterior sampler of
the model, up to the Langevin discretisation (step ``lr r(eps)^2``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from interfero.errors import InterferoError
from priors.sampling import noise_time
from priors.sde import _bcast

from .problem import InverseProblem
from .runs import check_count, check_finite, check_positive, sampled_posterior
from .summary import Posterior


@dataclass
class ALDConfig:
    """levels: noise levels (geometric in ``r``); steps_per_level: Langevin steps at each; lr: step size
    as a fraction of the level's noise variance ``r^2``; gamma: scale of the annealed data noise (0: the
    plain likelihood at every level); n_samples: independent chains, ``batch`` at a time; seed.

    Why ``gamma = 0.5`` and ``lr = 0.1`` (one setting for every problem, chosen on the face-Gaussian checks of
    ``scripts/validate_samplers.py``, which therefore do not test it independently): the annealed weight
    keeps the data step stable at the high levels, where a step of ``lr r^2`` meets data of effective
    noise ``gamma r``: stable while ``lr / gamma^2 < 2`` (0.4 here). A larger ``gamma`` (the paper's 1)
    leaves the data noise inflated at the level where the chains stop moving (``lr r^2`` steps are tiny
    once ``r^2`` is below the posterior variance), so the samples come out too broad; so does too little
    Langevin time ``levels * steps_per_level * lr``: at ``lr = 0.05`` the deblurring check's std was
    14% too large, at 0.1 7%."""

    levels: int = 300
    steps_per_level: int = 3
    lr: float = 0.1
    gamma: float = 0.5
    n_samples: int = 64
    batch: int = 64
    seed: int = 0

    def validate(self) -> None:
        check_count("ALD levels", self.levels, 2)
        check_count("ALD steps per level", self.steps_per_level)
        check_positive("ALD step size lr", self.lr)
        if self.lr >= 1:
            raise InterferoError(f"ALD step size lr must be < 1 (a fraction of the level's variance), got {self.lr}")
        check_positive("ALD gamma", self.gamma, allow_zero=True)
        check_count("number of samples", self.n_samples, 2)
        check_count("batch", self.batch)


def noise_levels(sde, levels: int) -> torch.Tensor:
    """``levels`` noise-to-signal ratios ``r = std / alpha``, geometric from ``r(T)`` to ``r(eps)``."""
    ends = [float(s / a) for a, s in (sde.coefficients(torch.tensor(t, dtype=torch.float64))
                                      for t in (sde.T, sde.eps))]
    return torch.logspace(math.log10(ends[0]), math.log10(ends[1]), levels, dtype=torch.float64)


def ald(problem: InverseProblem, config: ALDConfig | None = None, progress: bool = False) -> Posterior:
    """Score-ALD posterior samples of ``problem`` (its prior must be a score prior)."""
    cfg = config or ALDConfig()
    cfg.validate()
    prior = problem.score_prior("ald")
    sde, score = prior.sde, prior.score_model
    rs = noise_levels(sde, cfg.levels)
    ts = noise_time(sde, rs).float()
    alphas = sde.coefficients(ts.double())[0].float()
    weights = 1.0 / (1.0 + (cfg.gamma * rs * prior.scale / problem.noise_level()) ** 2)

    def draw(m: int, g: torch.Generator) -> torch.Tensor:
        u = float(rs[0]) * torch.randn((m, *problem.image_shape), generator=g)
        step = 0
        for i in range(cfg.levels):
            t, a, w = ts[i].expand(m), alphas[i], float(weights[i])
            h = cfg.lr * float(rs[i]) ** 2
            for _ in range(cfg.steps_per_level):
                with torch.enable_grad():
                    ug = u.detach().requires_grad_(True)
                    ll = problem.log_likelihood(prior.from_z(ug))
                    (grad,) = torch.autograd.grad(ll.sum(), ug)
                with torch.no_grad():
                    s = _bcast(a, u) * score(a * u, t) + w * grad
                    u = u + h * s + math.sqrt(2 * h) * torch.randn(u.shape, generator=g)
                check_finite(u, "ald", step, float(ts[i]))
                step += 1
        return prior.from_z(u)

    return sampled_posterior("ald", cfg, draw, problem.image_shape, progress)
