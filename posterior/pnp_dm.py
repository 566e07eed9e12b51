"""Plug-and-play diffusion Monte Carlo: split Gibbs sampling with the score prior (PnP-DM; Wu et al. 2024).

The posterior ``p(x | y) ~ p(y | x) p(x)`` is sampled through the joint density

    pi(x, v) ~ p(x) N(v; x, rho^2 I) p(y | v)

of the image ``x`` and a copy ``v`` of it tied by white Gaussian noise of std ``rho`` (in the score model's
units ``z``; ``rho * scale`` Jy/pixel for the black-hole priors). A Gibbs sweep draws each from its
conditional:

- **likelihood step**, ``v | x ~ p(y | v) N(v; x, rho^2)``: Metropolis-adjusted Langevin (MALA) steps
  preconditioned by ``(H + I / rho^2)^-1``, ``H`` the data's Gauss-Newton Hessian
  (:func:`posterior.laplace.data_hessians`; constant for a linear operator, else taken at each chain's own
  image, or at the chains' mean with ``metric="mean"``, every sweep while ``rho`` falls). The
  accept/reject step needs only the likelihood and the Gaussian, both exact: the unbounded gradients of
  closure phases near visibility nulls cost a rejected move, never a diverged chain. The step (a fraction
  of the metric) adapts per chain towards an acceptance rate of 0.57 while ``rho`` falls, then stays
  fixed with the metric, so that the last ``sweeps`` are a fixed Markov kernel;
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
prior step is nearly a fresh prior draw) to ``rho_min`` over ``anneal`` sweeps, then stays there for
``sweeps`` more. At ``rho_min`` a sweep moves an image by about ``rho_min`` where the data do not pin it, so
the spread the chains end with there is set while ``rho`` falls.

The start: each chain's first ``x`` is the problem's start image (``start="blob"``) or a draw of the prior
(``start="prior"``); ``init_steps`` Adam steps (rate ``init_lr``) then take
its ``v`` from there (jittered: a symmetric image is a saddle of closure phases) up
``p(y | v) N(v; x, rho_start^2)``. Closure data seen from a Gaussian blob sit some 10^6 nats below a fitting
image, out of reach of Langevin steps. The ascent is a starting point, but ``v`` moves only by Langevin
steps afterwards, so where quite different images fit the data (a compact ring seen by EHT 2017 fits about
as well as one twice its size) a chain stays with the one its ascent found: the start decides which of them
the chains sample, not the posterior's weights (docs/methods.md, "PnP-DM").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from interfero.errors import InterferoError
from interfero.operators import LinearOperator
from priors.sampling import ddpm, noise_time, time_grid, tweedie_denoise

from .laplace import MAX_PIXELS, data_hessians
from .problem import InverseProblem
from .runs import check_count, check_finite, check_positive, sampled_posterior
from .summary import Posterior

START_JITTER = 0.02  # white noise on the start before the ascent (score-model units): breaks its symmetry
STARTS = ("blob", "prior")  # PnPDMConfig.start: each chain starts at the problem's start image or its own prior draw
PRIOR_START_STEPS = 100  # reverse-SDE steps of a chain's prior-draw start
TARGET_ACCEPT = 0.57  # MALA's optimal acceptance rate in high dimension (Roberts & Rosenthal 1998)


@dataclass
class PnPDMConfig:
    """rho_start / rho_min: the coupling std at the first and the last sweeps (score-model units, i.e. a
    fraction of the prior's ``scale``; ``rho_min`` above 1.5x the model's smallest level ``std(eps) /
    alpha(eps)``); anneal: sweeps over which rho falls geometrically; sweeps: sweeps at ``rho_min`` after
    that; langevin_steps: MALA steps of each likelihood step; step: their starting size as a fraction of
    the metric (adapted while rho falls); prior_steps: ancestral (DDPM) steps of the prior step at
    ``rho_start`` (10 give samples 7% too narrow on the Gaussian checks, 50 within 2%); at a smaller ``rho``
    the same geometric time grid from its own time, so fewer steps of the same size; metric: the
    Gauss-Newton Hessian of each ``chain`` at its own image or one at the chains' ``mean`` (a linear
    operator has one anyway); renew: sweeps between new Hessians at the chains' images while rho falls
    (the ``1 / rho^2`` part follows every sweep);
    init_steps / init_lr: Adam steps (and their rate, score-model units) from the start up the data
    before the first sweep (0: none); n_samples: independent chains (one image each), ``batch`` at a
    time; seed; start: each chain's first ``x``, the problem's start image (``blob``) or its own draw of the
    prior (``prior``)."""

    rho_start: float = 1.0
    rho_min: float = 0.02
    anneal: int = 20
    sweeps: int = 5
    langevin_steps: int = 20
    step: float = 0.5
    prior_steps: int = 50
    metric: str = "chain"
    renew: int = 1
    init_steps: int = 1000
    init_lr: float = 0.003
    n_samples: int = 64
    batch: int = 64
    seed: int = 0
    start: str = "blob"

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
        check_count("PnP-DM renew", self.renew)
        check_count("PnP-DM init_steps", self.init_steps, 0)
        check_positive("PnP-DM init_lr", self.init_lr)
        if self.start not in STARTS:
            raise InterferoError(f"unknown PnP-DM start {self.start!r} (choose from {', '.join(STARTS)})")
        if self.metric not in ("chain", "mean"):
            raise InterferoError(f"unknown PnP-DM metric {self.metric!r} (choose from chain, mean)")
        check_count("number of samples", self.n_samples, 2)
        check_count("batch", self.batch)

    def sample_jitter(self, prior) -> float:
        """The per-pixel white std (Jy/pixel) of the smoothing of the prior's training law that the samples are
        drawn under: the last coupling ``rho_min`` times the prior's ``scale``."""
        return self.rho_min * float(prior.scale)


def coupling_schedule(cfg: PnPDMConfig) -> list[float]:
    """The coupling std of every sweep: geometric from ``rho_start`` to ``rho_min`` over ``anneal`` sweeps,
    then ``sweeps`` at ``rho_min``."""
    if cfg.anneal == 0:
        return [cfg.rho_min] * cfg.sweeps
    ratio = (cfg.rho_min / cfg.rho_start) ** (1.0 / cfg.anneal)
    return [cfg.rho_start * ratio**k for k in range(cfg.anneal)] + [cfg.rho_min] * cfg.sweeps


def sweep_times(cfg: PnPDMConfig, sde) -> list[float]:
    """The diffusion time whose noise std is each sweep's coupling (:func:`coupling_schedule`)."""
    return [float(noise_time(sde, r)) for r in coupling_schedule(cfg)]


def prior_step_counts(cfg: PnPDMConfig, sde, times: list[float] | None = None) -> list[int]:
    """The DDPM steps of each sweep's prior step: ``prior_steps`` from the time of ``rho_start``, and from a
    later sweep's (smaller) coupling as many of the same geometric size as its span down to ``eps`` holds
    (``times``: :func:`sweep_times`, computed when not given)."""
    times = sweep_times(cfg, sde) if times is None else times
    span = math.log(times[0] / sde.eps)
    return [max(1, math.ceil(cfg.prior_steps * math.log(t / sde.eps) / span - 1e-9)) for t in times]


class Metric:
    """The identity preconditioner; subclasses hold a symmetric positive-definite ``M`` (``(D, D)``, shared or
    one per chain) and give ``M a``, a draw of ``N(0, M)`` from white noise, and ``a^T M^-1 a``, on
    ``(chains, D)`` rows."""

    def apply(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def draw(self, n: torch.Tensor) -> torch.Tensor:
        return n

    def inv_quad(self, r: torch.Tensor) -> torch.Tensor:
        return (r**2).sum(1)


class EigenMetric(Metric):
    """``M = U diag(d) U^T``, shared by all chains (``U`` orthogonal)."""

    def __init__(self, u: torch.Tensor, d: torch.Tensor) -> None:
        self.u, self.d = u, d

    def apply(self, a):
        return ((a @ self.u) * self.d) @ self.u.T

    def draw(self, n):
        return (n * self.d.sqrt()) @ self.u.T

    def inv_quad(self, r):
        return ((r @ self.u) ** 2 / self.d).sum(1)


class CholeskyMetric(Metric):
    """``M = A^-1`` with ``A = L L^T`` one per chain (``L``: ``(chains, D, D)`` lower triangular)."""

    def __init__(self, chol: torch.Tensor) -> None:
        self.chol = chol

    def apply(self, a):  # two triangular solves: much faster than cholesky_solve on batched vectors
        u = torch.linalg.solve_triangular(self.chol, a[..., None], upper=False)
        return torch.linalg.solve_triangular(self.chol.mT, u, upper=True)[..., 0]

    def draw(self, n):
        return torch.linalg.solve_triangular(self.chol.mT, n[..., None], upper=True)[..., 0]

    def inv_quad(self, r):
        return ((self.chol.mT @ r[..., None])[..., 0] ** 2).sum(1)


def mala(log_target, v: torch.Tensor, h: torch.Tensor, steps: int, g: torch.Generator, adapt: bool,
         metric: Metric | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``steps`` Metropolis-adjusted Langevin steps of size ``h`` (one per chain) on ``log_target`` (one
    value per chain, differentiable), preconditioned by ``metric`` (None: the identity): proposals
    ``v + h M grad + (2 h)^1/2 M^1/2 n``. A proposal whose log-density or gradient is not finite is
    rejected. With ``adapt`` each chain's ``h`` moves towards the acceptance rate ``TARGET_ACCEPT``.
    Returns the new states, the step sizes and the chains' acceptance rates."""
    shape, m = v.shape, v.shape[0]
    metric = metric or Metric()

    def value_and_grad(u):
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            lp = log_target(u.reshape(shape))
            (gr,) = torch.autograd.grad(lp.sum(), u)
        ok = torch.isfinite(lp) & torch.isfinite(gr).all(1)
        return lp.detach().double(), gr.detach(), ok

    def log_q(a, b, mgb, hh):  # log density (up to a constant) of proposing a from b (mgb: M grad at b)
        return -metric.inv_quad(a - b - hh * mgb) / (4 * hh[:, 0])

    x = v.detach().reshape(m, -1).double()
    lp, gr, ok = value_and_grad(x)
    if not bool(ok.all()):
        raise InterferoError("pnp-dm: the likelihood is not finite at a chain's state")
    mg = metric.apply(gr)
    accepted = torch.zeros(m, dtype=torch.float64)
    for _ in range(steps):
        hh = h[:, None]
        noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
        prop = x + hh * mg + (2 * hh).sqrt() * metric.draw(noise)
        lp_p, gr_p, ok_p = value_and_grad(prop)
        mg_p = metric.apply(torch.where(ok_p[:, None], gr_p, 0.0))
        log_ratio = (lp_p - lp + log_q(x, prop, mg_p, hh) - log_q(prop, x, mg, hh)).nan_to_num(nan=-math.inf)
        take = ok_p & (torch.log(torch.rand(m, generator=g, dtype=torch.float64)) < log_ratio)
        t = take[:, None]
        x, mg, lp = torch.where(t, prop, x), torch.where(t, mg_p, mg), torch.where(take, lp_p, lp)
        accepted += take.double()
        if adapt:
            h = h * torch.exp(0.5 * (torch.exp(log_ratio.clamp(max=0.0)) - TARGET_ACCEPT))
    return x.to(v.dtype).reshape(shape), h, accepted / steps


def ascend(log_target, v: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """``steps`` Adam steps up ``log_target`` (summed over chains) from ``v``; a step to a non-finite value
    is undone and ends the ascent."""
    u = v.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([u], lr=lr)
    good = v.detach()
    for _ in range(steps):
        opt.zero_grad()
        loss = -log_target(u).sum()
        if not bool(torch.isfinite(loss)):
            return good
        good = u.detach().clone()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return u.detach() if bool(torch.isfinite(log_target(u)).all()) else good


def pnp_dm(problem: InverseProblem, config: PnPDMConfig | None = None, progress: bool = False) -> Posterior:
    """PnP-DM posterior samples of ``problem`` (its prior must be a score prior): ``n_samples`` chains."""
    cfg = config or PnPDMConfig()
    cfg.validate()
    prior = problem.score_prior("pnp-dm")
    sde, score = prior.sde, prior.score_model
    alpha_eps, std_eps = sde.coefficients(torch.tensor(sde.eps, dtype=torch.float64))
    r_eps = float(std_eps / alpha_eps)
    if cfg.rho_min <= 1.5 * r_eps:
        raise InterferoError(f"PnP-DM rho_min {cfg.rho_min:g} must be above 1.5x the prior's smallest noise level"
                             f" {r_eps:.3g} (score-model units)")
    rhos = coupling_schedule(cfg)
    times = sweep_times(cfg, sde)
    n_steps = prior_step_counts(cfg, sde, times)  # DDPM steps of the same size at every rho: fewer as rho falls
    alphas = [float(sde.coefficients(torch.tensor(t, dtype=torch.float64))[0]) for t in times]
    if math.prod(problem.image_shape) > MAX_PIXELS:
        raise InterferoError(f"pnp-dm's metric is a dense Hessian: images of at most {MAX_PIXELS} pixels, got"
                             f" {math.prod(problem.image_shape)}")
    z_init = prior.to_z(problem.initial_image()[:1])
    linear = isinstance(problem.operator, LinearOperator)
    stats: dict[str, list[float]] = {"acceptance": [], "step": []}
    trace: list[dict] = []

    def prior_step(v: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
        ts = time_grid(sde, n_steps[k], t_start=times[k])
        zt = alphas[k] * v
        zt = ddpm(score, sde, zt, ts, generator=g)
        return tweedie_denoise(score, sde, zt)

    def hessian_z(images_z: torch.Tensor) -> torch.Tensor:
        """The data's Gauss-Newton Hessians at a batch of images, ``(B, D, D)`` in score-model units."""
        return data_hessians(problem.operator, prior.from_z(images_z).double()) * (problem.data_weight
                                                                                  * prior.scale**2)

    def metric(v: torch.Tensor, rho: float, renew: bool, cache: dict) -> Metric:
        """``(H + I / rho^2)^-1``: one ``H`` for a linear operator or ``metric="mean"`` (at the chains' mean image),
        else one per chain at its own image; ``H`` is taken anew where ``renew`` (``cache`` keeps it)."""
        if linear or cfg.metric == "mean":
            if "eig" not in cache or (renew and not linear):
                lam, u = torch.linalg.eigh(hessian_z(v.mean(0, keepdim=True))[0])
                cache["eig"] = (u, lam.clamp_min(0.0))
            u, lam = cache["eig"]
            return EigenMetric(u, 1.0 / (lam + rho**-2))
        if "h" not in cache or renew:
            cache["h"] = hessian_z(v)
        eye = torch.eye(v[0].numel(), dtype=torch.float64)
        chol, info = torch.linalg.cholesky_ex(cache["h"] + eye / rho**2)
        if bool(info.any()):
            raise InterferoError("pnp-dm: the data's Hessian at a chain's image is not positive semi-definite")
        return CholeskyMetric(chol)

    def log_target_at(x: torch.Tensor, rho: float):
        def log_target(u):
            ll = problem.data_weight * problem.log_likelihood(prior.from_z(u))
            return ll - ((u - x) ** 2).flatten(1).sum(1) / (2 * rho**2)
        return log_target

    def start(m: int, g: torch.Generator) -> torch.Tensor:
        """Each chain's first ``x`` (score-model units): the problem's start image, or with ``start="prior"`` a
        draw of the prior each."""
        if cfg.start == "blob":
            return z_init.expand(m, *problem.image_shape).double().clone()
        return prior.to_z(prior.sample(m, steps=PRIOR_START_STEPS, generator=g)).double()

    def draw(m: int, g: torch.Generator) -> torch.Tensor:
        x = start(m, g)
        v = x.clone()
        if cfg.init_steps:  # the data's mode near the start, which the chain then keeps (module docstring)
            jitter = START_JITTER * torch.randn(v.shape, generator=g, dtype=v.dtype)  # a symmetric start is a
            v = ascend(log_target_at(x, rhos[0]), v + jitter, cfg.init_steps, cfg.init_lr)  # saddle of closure phases
        h = torch.full((m,), cfg.step, dtype=torch.float64)
        rates = torch.zeros(m, dtype=torch.float64)
        cache: dict = {}
        for k, rho in enumerate(rhos):
            adapt = k < cfg.anneal
            if k <= cfg.anneal:  # frozen with the step sizes once rho stops falling
                pre = metric(v, rho, k % cfg.renew == 0 or k == cfg.anneal, cache)
            v, h, rates = mala(log_target_at(x, rho), v, h, cfg.langevin_steps, g, adapt, pre)
            check_finite(v, "pnp-dm", k)
            x = prior_step(v.float(), k, g).double()
            check_finite(x, "pnp-dm", k)
            with torch.no_grad():
                ll = problem.log_likelihood(prior.from_z(v))
            trace.append({"batch": len(stats["step"]), "sweep": k, "rho": rho, "acceptance": float(rates.mean()),
                          "log_likelihood_median": float(ll.median())})
        stats["acceptance"].append(float(rates.mean()))
        stats["step"].append(float(h.median()))
        return prior.from_z(v.float())

    post = sampled_posterior("pnp-dm", cfg, draw, problem.image_shape, progress)
    post.diagnostics |= {"acceptance_final": stats["acceptance"], "step_final": stats["step"], "trace": trace}
    return post
