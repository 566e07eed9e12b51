"""Samplers of a score model's prior: DDPM, DDIM, reverse-SDE (Euler-Maruyama), probability-flow ODE.

Small stateless functions in the k-diffusion style, ``(score_fn, sde, x, ts, ..., callback)``:

- ``x`` is the state at ``ts[0]`` (draw it with ``sde.prior_sampling`` to start at ``T``);
- ``ts`` is the decreasing time grid (a tensor), or a number of steps for :func:`time_grid`'s
  geometric grid from ``T`` to ``eps``; each sampler returns the state at ``ts[-1]``;
- ``callback(step, t, x, denoised)`` is called after every step with the new time, the new state
  and the Tweedie estimate ``E[x(0) | x(t_step)]`` the step used.

All work in the score model's units (``z`` of :class:`priors.score_prior.ScorePrior`) and for every
SDE of :mod:`priors.sde` (Gaussian kernels ``N(alpha x0, std^2 I)``). :func:`denoised` is Tweedie's
formula, differentiable (DPS backpropagates through it); :func:`tweedie_denoise` is its no-grad form
that removes the residual noise of std ``sigma(eps)`` left at the smallest time (0.0105 in
transformed units for the VP SDE at eps = 1e-3).

The discrete samplers (:func:`ddim`, :func:`ddpm`) move between grid times with the forward
process's own Gaussian conditionals: from ``t`` to ``s < t`` the kernel is
``x_t | x_s ~ N(a x_s, v)`` with ``a = alpha_t / alpha_s``, ``v = std_t^2 - a^2 std_s^2``, and
``x_s | x_t, x_0`` is Gaussian with variance ``std_s^2 v / std_t^2``. DDIM keeps the fraction
``eta^2`` of that variance (``eta = 0``: deterministic; ``eta = 1``: the ancestral DDPM step).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from interfero.errors import InterferoError

from .ode import ADAPTIVE_METHODS
from .sde import SDE, ScoreFn, _bcast

Callback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def time_grid(sde: SDE, steps: int, spacing: str = "log", dtype=torch.float32, device=None,
              t_start: float | None = None) -> torch.Tensor:
    """``steps + 1`` decreasing times from ``t_start`` (default ``T``) to ``eps``: ``"log"`` (geometric)
    or ``"uniform"``.

    Why geometric: the marginals change on the scale of ``t`` itself near ``eps`` (``std(t)^2 ~ beta_min t``
    for the VP SDE). On a uniform grid of 500 steps the last Euler-Maruyama steps (``dt = 0.002`` at
    ``t = 0.003``) add more noise than the whole of ``std(eps)^2``: with an exact Gaussian score the draws
    of ``p_eps`` come out with 2.9x the variance in directions the data barely fill (1.9x at variance
    1e-4, 1.1x at 1e-3). The geometric grid gets every variance from 1e-5 to 1 within 2% (500 steps)
    and within 8% with 100 steps (``tests/test_priors_logp.py``).
    """
    if steps < 1:
        raise InterferoError(f"sampling needs at least 1 step, got {steps}")
    start = sde.T if t_start is None else float(t_start)
    if not sde.eps < start <= sde.T:
        raise InterferoError(f"start time must be in ({sde.eps:g}, {sde.T:g}], got {t_start}")
    if spacing == "log":
        ts = torch.logspace(math.log10(start), math.log10(sde.eps), steps + 1, dtype=torch.float64)
    elif spacing == "uniform":
        ts = torch.linspace(start, sde.eps, steps + 1, dtype=torch.float64)
    else:
        raise InterferoError(f"unknown time spacing {spacing!r} (choose from log, uniform)")
    ts[0], ts[-1] = start, sde.eps  # exact end points
    return ts.to(dtype=dtype, device=device)


def as_grid(sde: SDE, ts: torch.Tensor | int, like: torch.Tensor, spacing: str = "log") -> torch.Tensor:
    """``ts`` as a decreasing time tensor of ``like``'s dtype (an int: :func:`time_grid` with that many steps)."""
    if isinstance(ts, int):
        return time_grid(sde, ts, spacing, dtype=like.dtype, device=like.device)
    ts = torch.as_tensor(ts, dtype=like.dtype, device=like.device)
    if ts.ndim != 1 or ts.numel() < 2 or not bool(torch.all(ts[1:] < ts[:-1])):
        raise InterferoError("a time grid needs at least 2 strictly decreasing times")
    if float(ts[-1]) < sde.eps * (1 - 1e-6) or float(ts[0]) > sde.T * (1 + 1e-6):
        raise InterferoError(f"time grid must lie in [{sde.eps:g}, {sde.T:g}]")
    return ts


def denoised(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Tweedie's formula ``E[x(0) | x(t)] = (x + std(t)^2 score(x, t)) / alpha(t)``; keeps gradients."""
    tt = sde.time_tensor(t, x)
    alpha, sigma = (_bcast(c, x) for c in sde.coefficients(tt))
    return (x + sigma**2 * score_fn(x, tt)) / alpha


@torch.no_grad()
def tweedie_denoise(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, t: float | None = None) -> torch.Tensor:
    """:func:`denoised` without gradients, at ``t`` (default ``eps``)."""
    return denoised(score_fn, sde, x, sde.eps if t is None else t)


def _kernel(sde: SDE, t: torch.Tensor, s: torch.Tensor) -> tuple[float, float, float, float, float]:
    """``alpha_t, std_t, alpha_s, std_s, v`` with ``v = std_t^2 - (alpha_t/alpha_s)^2 std_s^2``."""
    at, st = (float(c) for c in sde.coefficients(t.double()))
    as_, ss = (float(c) for c in sde.coefficients(s.double()))
    v = max(st**2 - (at / as_) ** 2 * ss**2, 0.0)
    return at, st, as_, ss, v


def ddim_step(x: torch.Tensor, x0: torch.Tensor, sde: SDE, t: torch.Tensor, s: torch.Tensor, eta: float,
              noise: torch.Tensor | None) -> torch.Tensor:
    """One DDIM move from ``x`` at ``t`` to time ``s < t`` given the estimate ``x0`` of ``x(0)``."""
    at, st, as_, ss, v = _kernel(sde, t, s)
    eps_hat = (x - at * x0) / st
    sd = eta * ss * math.sqrt(v) / st
    out = as_ * x0 + math.sqrt(max(ss**2 - sd**2, 0.0)) * eps_hat
    return out if noise is None or sd == 0 else out + sd * noise


def ddpm_step(x: torch.Tensor, x0: torch.Tensor, sde: SDE, t: torch.Tensor, s: torch.Tensor,
              noise: torch.Tensor | None) -> torch.Tensor:
    """One ancestral move: a draw of ``q(x_s | x_t, x_0 = x0)`` (the forward process's posterior)."""
    at, st, as_, ss, v = _kernel(sde, t, s)
    a = at / as_
    mean = (a * ss**2 / st**2) * x + (as_ * v / st**2) * x0
    return mean if noise is None else mean + (ss * math.sqrt(v) / st) * noise


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


@torch.no_grad()
def ddim(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, ts: torch.Tensor | int = 100, eta: float = 0.0,
         generator: torch.Generator | None = None, callback: Callback | None = None,
         progress: bool = False) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021) on the grid ``ts``; ``eta`` in [0, 1] scales the injected noise."""
    if not 0 <= eta <= 1:
        raise InterferoError(f"DDIM eta must be in [0, 1], got {eta}")
    ts = as_grid(sde, ts, x)
    for i in tqdm(range(len(ts) - 1), disable=not progress, desc="ddim"):
        x0 = denoised(score_fn, sde, x, ts[i])
        x = ddim_step(x, x0, sde, ts[i], ts[i + 1], eta, _randn(x, generator) if eta > 0 else None)
        if callback is not None:
            callback(i, ts[i + 1], x, x0)
    return x


@torch.no_grad()
def ddpm(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, ts: torch.Tensor | int = 1000,
         generator: torch.Generator | None = None, callback: Callback | None = None,
         progress: bool = False) -> torch.Tensor:
    """Discrete DDPM ancestral sampling (Ho et al. 2020) on the grid ``ts``."""
    ts = as_grid(sde, ts, x)
    for i in tqdm(range(len(ts) - 1), disable=not progress, desc="ddpm"):
        x0 = denoised(score_fn, sde, x, ts[i])
        x = ddpm_step(x, x0, sde, ts[i], ts[i + 1], _randn(x, generator))
        if callback is not None:
            callback(i, ts[i + 1], x, x0)
    return x


@torch.no_grad()
def reverse_sde(
    score_fn: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    ts: torch.Tensor | int = 500,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    denoise: bool = True,
    spacing: str = "log",
) -> torch.Tensor:
    """Euler-Maruyama on ``dx = [f - g^2 score] dt + g dw_bar`` along ``ts``.

    ``spacing``: the grid when ``ts`` is a number of steps (:func:`time_grid`), geometric by default.
    ``denoise``: the last step returns the mean (no noise), as in score_sde; pass ``False`` for a draw
    of ``x(eps)`` (e.g. before :func:`tweedie_denoise`, which would otherwise denoise twice).
    """
    ts = as_grid(sde, ts, x, spacing)
    steps = len(ts) - 1
    for i in tqdm(range(steps), disable=not progress, desc="sampling"):
        t, dt = ts[i].expand(x.shape[0]), ts[i + 1] - ts[i]  # dt < 0
        f, g = sde.sde(x, t)
        g = _bcast(g, x)
        score = score_fn(x, t)
        mean = x + (f - g**2 * score) * dt
        last = i == steps - 1
        x0 = None
        if callback is not None:
            alpha, std = (_bcast(c, x) for c in sde.coefficients(t))
            x0 = (x + std**2 * score) / alpha
        x = mean if (last and denoise) else mean + g * (-dt).sqrt() * _randn(x, generator)
        if callback is not None:
            callback(i, ts[i + 1], x, x0)
    return x


@torch.no_grad()
def probability_flow(
    score_fn: ScoreFn, sde: SDE, x: torch.Tensor, ts: torch.Tensor | int | None = None, rtol: float = 1e-5,
    atol: float = 1e-5, method: str = "dopri5", callback: Callback | None = None,
) -> torch.Tensor:
    """Integrates the probability-flow ODE along ``ts`` (deterministic map of ``x``).

    ``ts=None``: from ``T`` to ``eps`` with the adaptive ``method`` at ``rtol``/``atol`` (dopri5);
    a grid (or a number of steps): Heun's second-order steps on it, with the callback after each.
    """
    if ts is None:
        from torchdiffeq import odeint

        def f(t, y):
            return sde.probability_flow_drift(score_fn, y, t.expand(y.shape[0]))

        grid = torch.tensor([sde.T, sde.eps], dtype=x.dtype, device=x.device)
        # land exactly on eps: an adaptive step past it would evaluate the score at t < eps (see priors.ode)
        options = {"step_t": grid} if method in ADAPTIVE_METHODS else {}
        return odeint(f, x, grid, rtol=rtol, atol=atol, method=method, options=options)[-1]
    grid = as_grid(sde, ts, x)
    for i in range(len(grid) - 1):
        t, s = grid[i].expand(x.shape[0]), grid[i + 1].expand(x.shape[0])
        dt = grid[i + 1] - grid[i]
        d1 = sde.probability_flow_drift(score_fn, x, t)
        xe = x + d1 * dt
        d2 = sde.probability_flow_drift(score_fn, xe, s)
        x0 = denoised(score_fn, sde, x, grid[i]) if callback is not None else None
        x = x + 0.5 * (d1 + d2) * dt
        if callback is not None:
            callback(i, grid[i + 1], x, x0)
    return x


def noise_time(sde: SDE, ratio: float | torch.Tensor) -> torch.Tensor:
    """The time ``t`` at which ``std(t) / alpha(t)`` equals ``ratio`` (the noise-to-signal ratio of
    ``x(t) / alpha(t) = x(0) + ratio * n``), by bisection; clamped to ``[eps, T]``."""
    r = torch.as_tensor(ratio, dtype=torch.float64)
    lo = torch.full_like(r, sde.eps)
    hi = torch.full_like(r, sde.T)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        a, s = sde.coefficients(mid)
        below = s / a < r
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)
