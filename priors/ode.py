"""Exact log-density of a score model through the probability-flow ODE.

For the PF-ODE ``dx/dt = F(x, t) = f(x, t) - 0.5 g(t)^2 score(x, t)``, the
instantaneous change of variables gives (integrating forward from ``eps``)::

    log p_eps(x) = log pi(x(T)) + int_eps^T div_x F(x(t), t) dt,   x(eps) = x.

The state ``(x, int div F)`` is integrated with torchdiffeq (``dopri5`` by
default; ``rtol``/``atol`` settable). The divergence is

- ``"exact"``: the trace of the Jacobian by ``D`` vector-Jacobian products of
  the one-hot basis, batched into one network call of ``D*B`` images per
  chunk (``chunk`` basis vectors at a time): for small images;
- ``"hutchinson"``: ``mean_k v_k^T (dF/dx) v_k`` with ``K`` probes ``v_k``
  (Rademacher or Gaussian) drawn once per solve (FFJORD), unbiased.
  With a ``control`` score whose divergence is known in closed form (a
  :class:`priors.networks.GaussianScore`, e.g. a Gaussian fitted to the
  training images: :meth:`GaussianScore.fit`), the probes estimate only the
  trace of ``d(F - F_ref)/dx`` and the closed-form ``div F_ref`` is added: still
  unbiased, with a variance that shrinks with ``|J - J_ref|_F^2`` instead of
  ``|J|_F^2`` (a control variate). For images whose score is close to a
  Gaussian's it reaches the exact trace's accuracy at a few probes' cost.
  Each probe's divergence is integrated as its own state component (the
  trajectory ``x(t)`` does not depend on the probes), so a solve with
  ``K >= 2`` probes also reports the standard error of its estimate
  (``PFODEResult.probe_sem``, the spread of the ``K`` per-probe log p values
  over ``sqrt(K)``) at no extra cost.

Gradients of ``log p`` with respect to ``x``:

- ``gradient="backprop"`` backpropagates through the solver's operations
  (memory grows with the number of function evaluations: about 35 MB per
  32x32 image per evaluation for a 1M-parameter U-Net; chunk the batch);
- ``gradient="adjoint"`` solves the adjoint ODE backwards
  (``torchdiffeq.odeint_adjoint``, constant memory; ``adjoint_params=()`` so
  only ``x`` gets a gradient, network weights are treated as constants);
- ``gradient="none"`` computes the value only (no graph is kept).

See ``docs/priors.md`` for the settings under which gradients are trustworthy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from interfero.errors import InterferoError

from .sde import SDE, ScoreFn

DIVERGENCES = ("exact", "hutchinson")
GRADIENTS = ("backprop", "adjoint", "none")
PROBES = ("rademacher", "gaussian")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def draw_probes(shape, k: int, kind: str, generator=None, dtype=torch.float32, device=None) -> torch.Tensor:
    """``k`` probe tensors of ``shape`` with ``E[v v^T] = I``: Rademacher (+-1) or standard Gaussian."""
    if kind == "rademacher":
        return torch.randint(0, 2, (k, *shape), generator=generator, device=device).to(dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn((k, *shape), generator=generator, dtype=dtype, device=device)
    raise InterferoError(f"unknown probe distribution {kind!r} (choose from {', '.join(PROBES)})")


class PFODEDynamics(nn.Module):
    """Right-hand side ``(F(x, t), div F(x, t))`` of the augmented PF-ODE; counts evaluations."""

    def __init__(self, score_fn: ScoreFn, sde: SDE, divergence: str, probes: torch.Tensor | None,
                 chunk: int, keep_graph: bool, control=None) -> None:
        super().__init__()
        self.score_fn, self.sde, self.control = score_fn, sde, control
        self.divergence, self.probes, self.chunk = divergence, probes, chunk
        self.keep_graph = keep_graph
        self.nfe = 0

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.sde.probability_flow_drift(self.score_fn, x, t.expand(x.shape[0]))

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        x = state[0]
        self.nfe += 1
        outer_grad = torch.is_grad_enabled()
        create_graph = self.keep_graph and outer_grad
        with torch.enable_grad():
            if not (outer_grad and x.requires_grad):  # a fresh leaf unless x is part of the caller's graph
                x = x.detach().requires_grad_(True)
            if self.divergence == "exact":
                drift, div = self._exact(x, t, create_graph)
            else:
                drift, div = self._hutchinson(x, t, create_graph)
        if not create_graph:
            drift, div = drift.detach(), div.detach()
        return drift, div

    def _replicated(self, x, k):
        return x.unsqueeze(0).expand(k, *x.shape).reshape(k * x.shape[0], *x.shape[1:])

    def _hutchinson(self, x, t, create_graph):
        v = self.probes
        k, b = v.shape[0], x.shape[0]
        xr = self._replicated(x, k) if k > 1 else x
        out = self.drift(xr, t)
        vf = v.reshape(k * b, *x.shape[1:])
        probed, known = out, 0.0
        if self.control is not None:  # probe only F - F_ref; div F_ref in closed form
            tt = t.expand(xr.shape[0])
            probed = out - self.sde.probability_flow_drift(self.control, xr, tt)
            g2 = self.sde.diffusion(t) ** 2
            known = (self.sde.divergence_drift(t, x[0].numel()) - 0.5 * g2 * self.control.divergence(t, x)).to(x.dtype)
        (vjp,) = torch.autograd.grad((probed * vf).sum(), xr, create_graph=create_graph)
        div = (vjp * vf).reshape(k, b, -1).sum(-1) + known  # (K, B): one divergence per probe
        return out[:b], div

    def _exact(self, x, t, create_graph):
        b, d = x.shape[0], x[0].numel()
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        div = torch.zeros(b, dtype=x.dtype, device=x.device)
        drift = None
        for start in range(0, d, self.chunk):
            e = eye[start : start + self.chunk]  # (c, d)
            c = e.shape[0]
            xr = self._replicated(x, c)
            out = self.drift(xr, t)
            ef = e[:, None, :].expand(c, b, d).reshape(c * b, *x.shape[1:])
            (vjp,) = torch.autograd.grad((out * ef).sum(), xr, create_graph=create_graph)
            div = div + (vjp * ef).reshape(c, b, -1).sum(-1).sum(0)
            if drift is None:
                drift = out[:b]
        return drift, div


@dataclass
class PFODEResult:
    """``logp`` ``(B,)``; ``z`` the state at ``T``; ``prior_logp`` and ``delta_logp`` its two terms.

    ``probe_sem`` ``(B,)``: the standard error of a Hutchinson estimate (the sample standard deviation of
    the ``K`` per-probe values over ``sqrt(K)``, nats); ``None`` for the exact trace or one probe.
    """

    logp: torch.Tensor
    z: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    nfe_forward: int
    dynamics: PFODEDynamics
    probe_sem: torch.Tensor | None = None

    @property
    def nfe(self) -> int:
        """Function evaluations so far (forward solve, plus the adjoint solve once backward has run)."""
        return self.dynamics.nfe


def pf_ode_logp(
    score_fn: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    divergence: str = "hutchinson",
    probes: int = 1,
    probe: str = "rademacher",
    gradient: str = "backprop",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    chunk: int = 256,
    generator: torch.Generator | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_options: dict | None = None,
    land_on_endpoints: bool = True,
    control=None,
) -> PFODEResult:
    """``log p_eps(x)`` of the score model's PF-ODE, per batch item (see the module docstring).

    ``x`` is ``(B, C, H, W)`` in the model's own units (float32 or float64).
    ``land_on_endpoints=False`` restores torchdiffeq's default stepping (for the
    record: its adjoint solve then fails, see the comment below). ``control``: a
    score with a closed-form ``divergence(t, like)`` used as a control variate of
    the Hutchinson estimator (ignored by the exact trace).
    """
    from torchdiffeq import odeint, odeint_adjoint

    if divergence not in DIVERGENCES:
        raise InterferoError(f"unknown divergence {divergence!r} (choose from {', '.join(DIVERGENCES)})")
    if gradient not in GRADIENTS:
        raise InterferoError(f"unknown gradient mode {gradient!r} (choose from {', '.join(GRADIENTS)})")
    if probes < 1:
        raise InterferoError("the Hutchinson estimator needs at least one probe")
    if not torch.all(torch.isfinite(x)):
        raise InterferoError("log p of an image with NaN or infinite pixels")
    v = None
    if divergence == "hutchinson":
        v = draw_probes(x.shape, probes, probe, generator, x.dtype, x.device)
    if control is not None and not callable(getattr(control, "divergence", None)):
        raise InterferoError("a Hutchinson control variate needs a score with a closed-form divergence(t, like)")
    dyn = PFODEDynamics(score_fn, sde, divergence, v, chunk, keep_graph=gradient != "none",
                        control=control if divergence == "hutchinson" else None)
    ts = torch.tensor([sde.eps, sde.T], dtype=x.dtype, device=x.device)
    # the integral of div F: one per probe for Hutchinson (K, B), else (B,)
    delta_shape = (x.shape[0],) if v is None else (v.shape[0], x.shape[0])
    state = (x, torch.zeros(delta_shape, dtype=x.dtype, device=x.device))
    # Adaptive Runge-Kutta steps in torchdiffeq may overshoot the end time and interpolate back. Past T
    # that is harmless, but the adjoint solve runs from T down to eps, and an overshoot evaluates the score
    # at t < eps (t < 0: std(t) is NaN) -- the cause of 'underflow in dt'. step_t makes every solve land
    # exactly on eps and T.
    fixed = {"step_t": ts} if (method in ADAPTIVE_METHODS and land_on_endpoints) else {}
    if gradient == "adjoint":
        opts = {"norm": "seminorm", **fixed} if adjoint_options is None else {**fixed, **adjoint_options}
        zs, deltas = odeint_adjoint(
            dyn, state, ts, rtol=rtol, atol=atol, method=method, options=dict(fixed), adjoint_params=(),
            adjoint_rtol=adjoint_rtol if adjoint_rtol is not None else rtol,
            adjoint_atol=adjoint_atol if adjoint_atol is not None else atol, adjoint_options=opts,
        )
    elif gradient == "backprop":
        zs, deltas = odeint(dyn, state, ts, rtol=rtol, atol=atol, method=method, options=dict(fixed))
    else:
        with torch.no_grad():
            zs, deltas = odeint(dyn, state, ts, rtol=rtol, atol=atol, method=method, options=dict(fixed))
    z, delta = zs[-1], deltas[-1]
    sem = None
    if delta.ndim == 2:
        k = delta.shape[0]
        sem = delta.detach().std(0) / k**0.5 if k > 1 else None
        delta = delta.mean(0)
    prior = sde.prior_logp(z)
    return PFODEResult(prior + delta, z, prior, delta, dyn.nfe, dyn, sem)
