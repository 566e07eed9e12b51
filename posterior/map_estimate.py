"""MAP / regularised maximum likelihood: ``argmax_x log p(y | x) + log p(x)`` by L-BFGS on any operator.

The regulariser is the problem's prior: TV, MEM, L1 (``priors.classical.image_regulariser``; the
``tv``, ``mem``, ``tv+mem``, ``l1`` priors of the CLI) or a score prior through its ELBO. The ELBO is
stochastic; each evaluation reuses the same random draws (common random numbers, ``seed``), so the
objective L-BFGS sees is deterministic. Starts from the problem's start image (``InverseProblem.initial_image``).
The result is a point estimate without uncertainty.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from .problem import InverseProblem
from .runs import check_count, check_finite
from .summary import Posterior, point_estimate


@dataclass
class MAPConfig:
    """iterations: L-BFGS iterations (strong-Wolfe line search); history: its memory; seed: the
    ELBO's fixed draws."""

    iterations: int = 200
    history: int = 20
    seed: int = 0

    def validate(self) -> None:
        check_count("MAP iterations", self.iterations)
        check_count("MAP L-BFGS history", self.history)


def map_estimate(problem: InverseProblem, config: MAPConfig | None = None, progress: bool = False) -> Posterior:
    """The MAP image of ``problem`` as a point posterior (``diagnostics``: objective, iterations)."""
    from priors.score_prior import ScorePrior

    cfg = config or MAPConfig()
    cfg.validate()
    prior = problem.prior
    if isinstance(prior, ScorePrior):
        prior = prior.with_estimator(method="elbo")
    t0 = time.perf_counter()
    x = problem.initial_image()[:1].clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=cfg.iterations, history_size=cfg.history,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)
    evals = []

    def objective() -> torch.Tensor:
        opt.zero_grad()
        if isinstance(prior, ScorePrior):
            lp = prior.log_prob(x, generator=torch.Generator().manual_seed(cfg.seed))
        else:
            lp = prior.log_prob(x)
        loss = -(problem.log_likelihood(x) + lp).sum()
        loss.backward()
        evals.append(float(loss.detach()))
        return loss

    opt.step(objective)
    check_finite(x.detach(), "map", len(evals))
    seconds = time.perf_counter() - t0
    diag = {"method": "map", "config": asdict(cfg), "regulariser": prior.name, "objective": evals[-1],
            "evaluations": len(evals), "seconds": seconds, "seconds_per_sample": seconds}
    return point_estimate(x.detach()[0].double().numpy(), diag)
