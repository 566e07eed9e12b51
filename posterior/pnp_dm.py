"""Plug-and-play diffusion Monte Carlo: split Gibbs sampling with the score prior (PnP-DM; Wu et al. 2024).

The posterior ``p(x | y) ~ p(y | x) p(x)`` is sampled through the joint density

    pi(x, v) ~ p(x) N(v; x, rho^2 I) p(y | v)

of the image ``x`` and a copy ``v`` of it tied by white Gaussian noise of std ``rho`` (in the score model's
units ``z``; ``rho * scale`` Jy/pixel for the black-hole priors). A Gibbs sweep draws each from its
conditional:

- **likelihood step**, ``v | x ~ p(y | v) N(v; x, rho^2)``: Metropolis-adjusted Langevin (MALA) steps
  preconditioned by ``(H + I / rho^2)^-1``, ``H`` the data's Gauss-Newton Hessian
  (:func:`posterior.laplace.data_hessian`; constant for a linear operator, else taken at the chains'
  mean image while ``rho`` falls). The accept/reject step needs only the likelihood and the Gaussian,
  both exact: the unbounded gradients of closure phases near visibility nulls cost a rejected move,
  never a diverged chain. The step (a fraction of the metric) adapts per chain towards an acceptance
  rate of 0.57 while ``rho`` falls, then stays fixed with the metric;
- **prior step**, ``x | v ~ p(x) N(v; x, rho^2)``: the posterior of denoising ``v`` at noise level
  ``rho``, which a diffusion model samples directly: ``alpha(t) v`` is a draw of ``z(t)`` at the time
  ``t`` whose noise-to-signal ratio is ``rho``, so ancestral (DDPM) steps from ``t`` to ``eps``, then
  Tweedie's formula, draw ``x``. Only the prior's score is used, never its log-density.

What the chains sample: ``v``'s marginal is exactly ``p_rho(v) p(y | v)``, the posterior under the prior
smoothed by ``N(0, rho^2)`` (the diffusion's own marginal at that noise level) with the likelihood
unchanged; ``x``'s is the prior times the likelihood smoothed by ``rho`` in every direction, far too broad
where the data pin an image more tightly than ``rho`` (interferometry). So each chain returns its last
``v``: the samples are of the model's posterior with the prior's pixel jitter ``rho_min * scale`` instead
of ``std(eps) / alpha(eps) * scale``. ``rho`` falls geometrically from ``rho_start`` (at ``rho ~ 1`` the
prior step is nearly a fresh prior draw: the chains forget their start) to ``rho_min`` over ``anneal``
sweeps, then stays there for ``sweeps`` more. At ``rho_min`` a sweep moves an image by about ``rho_min``
where the data do not pin it, so the spread the chains end with there is set while ``rho`` falls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from interfero.errors import InterferoError
from interfero.operators import LinearOperator
from priors.sampling import ddpm, noise_time, time_grid, tweedie_denoise

from .laplace import MAX_PIXELS, data_hessian
from .problem import InverseProblem
from .runs import check_count, check_finite, check_positive, sampled_posterior
from .summary import Posterior

TARGET_ACCEPT = 0.57  # MALA's optimal acceptance rate in high dimension (Roberts & Rosenthal 1998)


@dataclass
class PnPDMConfig:
    """rho_start / rho_min: the coupling std at the first and the last sweeps (score-model units, i.e. a
    fraction of the prior's ``scale``; ``rho_min`` above 1.5x the model's smallest level ``std(eps) /
    alpha(eps)``); anneal: sweeps over which rho falls geometrically; sweeps: sweeps at ``rho_min`` after
    that; langevin_steps: MALA steps of each likelihood step; step: their starting size as a fraction of
    the metric (adapted while rho falls); prior_steps: ancestral (DDPM) steps of each prior step (10 give
    samples 7% too narrow on the Gaussian checks, 50 within 2%); n_samples: independent chains (one image
    each), ``batch`` at a time; seed."""

    rho_start: float = 1.0
    rho_min: float = 0.05
    anneal: int = 40
    sweeps: int = 20
    langevin_steps: int = 10
    step: float = 0.5
    prior_steps: int = 50
    n_samples: int = 64
    batch: int = 64
    seed: int = 0

    def validate(self) -> None:
        check_positive("PnP-DM rho_start", self.rho_start)
        check_positive("PnP-DM rho_min", self.rho_min)
        if self.rho_min > self.rho_start:
            raise InterferoError(f"PnP-DM rho_min {self.rho_min:g} is above rho_start {self.rho_start:g}")
        check_count("PnP-DM anneal sweeps", self.anneal, 0)
        check_count("PnP-DM sweeps", self.sweeps)
        check_count("PnP-DM langevin_steps", self.langevin_steps)
        check_positive("PnP-DM step", self.step)
        check_count("PnP-DM prior_steps", self.prior_steps)
        check_count("number of samples", self.n_samples, 2)
        check_count("batch", self.batch)


def coupling_schedule(cfg: PnPDMConfig) -> list[float]:
    """The coupling std of every sweep: geometric from ``rho_start`` to ``rho_min`` over ``anneal`` sweeps,
    then ``sweeps`` at ``rho_min``."""
    if cfg.anneal == 0:
        return [cfg.rho_min] * cfg.sweeps
    ratio = (cfg.rho_min / cfg.rho_start) ** (1.0 / cfg.anneal)
    return [cfg.rho_start * ratio**k for k in range(cfg.anneal)] + [cfg.rho_min] * cfg.sweeps


def mala(log_target, v: torch.Tensor, h: torch.Tensor, steps: int, g: torch.Generator, adapt: bool,
         metric: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``steps`` Metropolis-adjusted Langevin steps of size ``h`` (one per chain) on ``log_target`` (one
    value per chain, differentiable), preconditioned by ``metric = (U, d)``, the matrix ``M = U diag(d) U^T``
    (``U`` orthogonal, ``(D, D)``; None: the identity): proposals ``v + h M grad + (2 h)^1/2 M^1/2 n``. A
    proposal whose log-density or gradient is not finite is rejected. With ``adapt`` each chain's ``h``
    moves towards the acceptance rate ``TARGET_ACCEPT``. Returns the new states, the step sizes and the
    chains' acceptance rates."""
    shape, m = v.shape, v.shape[0]
    u_mat, d = metric if metric is not None else (None, None)

    def to_eig(a):  # coordinates in the metric's eigenbasis
        return a if u_mat is None else a @ u_mat

    def from_eig(c):
        return c if u_mat is None else c @ u_mat.T

    def precondition(a):
        return a if u_mat is None else from_eig(to_eig(a) * d)

    def value_and_grad(u):
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            lp = log_target(u.reshape(shape))
            (gr,) = torch.autograd.grad(lp.sum(), u)
        ok = torch.isfinite(lp) & torch.isfinite(gr).all(1)
        return lp.detach().double(), gr.detach(), ok

    def log_q(a, b, gb, hh):  # log density (up to a constant) of proposing a from b
        r = to_eig(a - b - hh * precondition(gb))
        w = r**2 if d is None else r**2 / d
        return -w.sum(1) / (4 * hh[:, 0])

    x = v.detach().reshape(m, -1).double()
    lp, gr, ok = value_and_grad(x)
    if not bool(ok.all()):
        raise InterferoError("pnp-dm: the likelihood is not finite at a chain's state")
    accepted = torch.zeros(m, dtype=torch.float64)
    for _ in range(steps):
        hh = h[:, None]
        noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
        step_noise = noise if d is None else from_eig(noise * d.sqrt())
        prop = x + hh * precondition(gr) + (2 * hh).sqrt() * step_noise
        lp_p, gr_p, ok_p = value_and_grad(prop)
        log_ratio = (lp_p - lp + log_q(x, prop, gr_p, hh) - log_q(prop, x, gr, hh)).nan_to_num(nan=-math.inf)
        take = ok_p & (torch.log(torch.rand(m, generator=g, dtype=torch.float64)) < log_ratio)
        t = take[:, None]
        x, gr, lp = torch.where(t, prop, x), torch.where(t, gr_p, gr), torch.where(take, lp_p, lp)
        accepted += take.double()
        if adapt:
            h = h * torch.exp(0.5 * (torch.exp(log_ratio.clamp(max=0.0)) - TARGET_ACCEPT))
    return x.to(v.dtype).reshape(shape), h, accepted / steps


def pnp_dm(problem: InverseProblem, config: PnPDMConfig | None = None, progress: bool = False) -> Posterior:
    """PnP-DM posterior samples of ``problem`` (its prior must be a score prior): ``n_samples`` chains."""
    cfg = config or PnPDMConfig()
    cfg.validate()
    prior = problem.score_prior("pnp-dm")
    sde, score = prior.sde, prior.score_model
    r_eps = float(sde.coefficients(torch.tensor(sde.eps, dtype=torch.float64))[1]
                  / sde.coefficients(torch.tensor(sde.eps, dtype=torch.float64))[0])
    if cfg.rho_min <= 1.5 * r_eps:
        raise InterferoError(f"PnP-DM rho_min {cfg.rho_min:g} must be above 1.5x the prior's smallest noise level"
                             f" {r_eps:.3g} (score-model units)")
    rhos = coupling_schedule(cfg)
    times = [float(noise_time(sde, r)) for r in rhos]
    alphas = [float(sde.coefficients(torch.tensor(t, dtype=torch.float64))[0]) for t in times]
    if math.prod(problem.image_shape) > MAX_PIXELS:
        raise InterferoError(f"pnp-dm's metric is a dense Hessian: images of at most {MAX_PIXELS} pixels, got"
                             f" {math.prod(problem.image_shape)}")
    z_init = prior.to_z(problem.initial_image()[:1])
    linear = isinstance(problem.operator, LinearOperator)
    stats: dict[str, list[float]] = {"acceptance": [], "step": []}

    def prior_step(v: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
        ts = time_grid(sde, cfg.prior_steps, t_start=times[k])
        zt = alphas[k] * v
        zt = ddpm(score, sde, zt, ts, generator=g)
        return tweedie_denoise(score, sde, zt)

    def metric(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The eigenvectors and eigenvalues of the data's Gauss-Newton Hessian in score-model units at the
        chains' mean image (the same everywhere for a linear operator)."""
        hx = data_hessian(problem.operator, prior.from_z(v.mean(0)).double())
        lam, u = torch.linalg.eigh(hx * (problem.data_weight * prior.scale**2))
        return u, lam.clamp_min(0.0)

    def draw(m: int, g: torch.Generator) -> torch.Tensor:
        x = z_init.expand(m, *problem.image_shape).double().clone()
        v = x.clone()
        h = torch.full((m,), cfg.step, dtype=torch.float64)
        rates = torch.zeros(m, dtype=torch.float64)
        for k, rho in enumerate(rhos):
            def log_target(u, x=x, rho=rho):
                ll = problem.data_weight * problem.log_likelihood(prior.from_z(u))
                return ll - ((u - x) ** 2).flatten(1).sum(1) / (2 * rho**2)

            adapt = k < cfg.anneal
            if k == 0 or (k <= cfg.anneal and not linear):  # frozen with the step sizes once rho stops falling
                u_mat, lam = metric(v)
            v, h, rates = mala(log_target, v, h, cfg.langevin_steps, g, adapt, (u_mat, 1.0 / (lam + rho**-2)))
            check_finite(v, "pnp-dm", k)
            x = prior_step(v.float(), k, g).double()
            check_finite(x, "pnp-dm", k)
        stats["acceptance"].append(float(rates.mean()))
        stats["step"].append(float(h.median()))
        return prior.from_z(v.float())

    post = sampled_posterior("pnp-dm", cfg, draw, problem.image_shape, progress)
    post.diagnostics |= {"acceptance_final": stats["acceptance"], "step_final": stats["step"]}
    return post
