"""MAP / regularised maximum likelihood: ``argmax_x log p(y | x) + log p(x)`` by L-BFGS on any operator.

The regulariser is the problem's prior: TV, MEM, L1 (``priors.classical.image_regulariser``; the
``tv``, ``mem``, ``tv+mem``, ``l1`` priors of the CLI) or a score prior through its ELBO. The ELBO is
stochastic; each evaluation reuses the same random draws (common random numbers, ``seed``), so the
objective L-BFGS sees is deterministic. Starts from the problem's start image (``InverseProblem.initial_image``).
The result is a point estimate without uncertainty.

The optimiser is a plain L-BFGS (two-loop recursion) with a backtracking Armijo line search that
treats a non-finite objective as a failed step and halves it. Closure likelihoods of a featureless
start have huge gradients where a visibility is near zero; a Wolfe line search that trusts its
first trial step there lands on non-finite pixels. With ``transform="log"`` the image is
``exp(z)`` and the search runs over ``z``: images stay positive (as in ehtim's RML).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from interfero.errors import InterferoError

from .problem import InverseProblem
from .runs import check_count, check_finite
from .summary import Posterior, point_estimate

TRANSFORMS = ("auto", "none", "log")


@dataclass
class MAPConfig:
    """iterations: L-BFGS iterations; history: its memory; seed: the ELBO's fixed draws; transform: ``log``
    searches over log-pixels (positive images), ``none`` over pixels, ``auto`` is ``log`` when the start
    image is strictly positive (``reconstruct``'s blob) and ``none`` otherwise."""

    iterations: int = 200
    history: int = 20
    seed: int = 0
    transform: str = "auto"

    def validate(self) -> None:
        check_count("MAP iterations", self.iterations)
        check_count("MAP L-BFGS history", self.history)
        if self.transform not in TRANSFORMS:
            raise InterferoError(f"MAP transform must be one of {', '.join(TRANSFORMS)}, got {self.transform!r}")


def lbfgs(fun: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, iterations: int, history: int = 20,
          gtol: float = 1e-9, ftol: float = 1e-12, max_halvings: int = 40) -> tuple[torch.Tensor, float, list[float]]:
    """Minimise the scalar ``fun`` from ``z0`` (float64 inside); returns ``(z, f(z), every objective
    evaluated)``. Stops when the gradient's max-norm is below ``gtol``, the relative change of the
    objective is below ``ftol``, or no step of up to ``max_halvings`` halvings lowers it (Armijo, c1 = 1e-4)."""

    def value_and_grad(z: torch.Tensor) -> tuple[float, torch.Tensor]:
        z = z.detach().requires_grad_(True)
        f = fun(z)
        (g,) = torch.autograd.grad(f, z)
        return float(f.detach()), g.detach()

    z = z0.detach().double().clone()
    f, g = value_and_grad(z)
    if not (torch.isfinite(g).all() and f == f and abs(f) != float("inf")):
        raise InterferoError("MAP: the objective or its gradient is not finite at the start image")
    evals, s_hist, y_hist = [f], [], []
    for _ in range(iterations):
        if float(g.abs().max()) <= gtol:
            break
        q = g.clone()
        alphas = []
        for s, y in reversed(list(zip(s_hist, y_hist, strict=True))):
            a = float((s * q).sum()) / float((y * s).sum())
            alphas.append(a)
            q -= a * y
        if s_hist:
            q *= float((s_hist[-1] * y_hist[-1]).sum()) / float((y_hist[-1] * y_hist[-1]).sum())
            t = 1.0
        else:
            t = min(1.0, 1.0 / float(g.abs().sum()))
        for (s, y), a in zip(zip(s_hist, y_hist, strict=True), reversed(alphas), strict=True):
            b = float((y * q).sum()) / float((y * s).sum())
            q += (a - b) * s
        d = -q
        slope = float((g * d).sum())
        if slope >= 0:  # not a descent direction: restart from steepest descent
            s_hist.clear()
            y_hist.clear()
            d, slope, t = -g, -float((g * g).sum()), min(1.0, 1.0 / float(g.abs().sum()))
        for _ in range(max_halvings):
            f_new, g_new = value_and_grad(z + t * d)
            evals.append(f_new)
            finite = f_new == f_new and abs(f_new) != float("inf") and bool(torch.isfinite(g_new).all())
            if finite and f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break
        s_new, y_new = t * d, g_new - g
        if float((s_new * y_new).sum()) > 1e-12 * float(y_new.norm() * s_new.norm()):
            s_hist.append(s_new)
            y_hist.append(y_new)
            if len(s_hist) > history:
                s_hist.pop(0)
                y_hist.pop(0)
        z = z + s_new
        converged = abs(f - f_new) <= ftol * max(1.0, abs(f))
        f, g = f_new, g_new
        if converged:
            break
    return z, f, evals


def map_estimate(problem: InverseProblem, config: MAPConfig | None = None, progress: bool = False) -> Posterior:
    """The MAP image of ``problem`` as a point posterior (``diagnostics``: objective, evaluations)."""
    from priors.score_prior import ScorePrior

    cfg = config or MAPConfig()
    cfg.validate()
    prior = problem.prior
    if isinstance(prior, ScorePrior):
        prior = prior.with_estimator(method="elbo")
    t0 = time.perf_counter()
    x0 = problem.initial_image()[:1]
    transform = cfg.transform
    if transform == "auto":
        transform = "log" if bool((x0 > 0).all()) else "none"
    if transform == "log" and not bool((x0 > 0).all()):
        raise InterferoError("MAP transform 'log' needs a strictly positive start image")
    to_image = torch.exp if transform == "log" else (lambda z: z)
    z0 = torch.log(x0) if transform == "log" else x0

    def objective(z: torch.Tensor) -> torch.Tensor:
        x = to_image(z).to(torch.float32)
        if isinstance(prior, ScorePrior):
            lp = prior.log_prob(x, generator=torch.Generator().manual_seed(cfg.seed))
        else:
            lp = prior.log_prob(x)
        return -(problem.log_likelihood(x) + lp).sum()

    z, f, evals = lbfgs(objective, z0, cfg.iterations, cfg.history)
    x = to_image(z).to(torch.float32)
    check_finite(x, "map", len(evals))
    seconds = time.perf_counter() - t0
    diag = {"method": "map", "config": asdict(cfg), "transform": transform, "regulariser": prior.name,
            "objective": f, "evaluations": len(evals), "seconds": seconds, "seconds_per_sample": seconds}
    return point_estimate(x[0].double().numpy(), diag)
