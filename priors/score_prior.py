"""A score-based diffusion model as an image prior ``log p(x)`` (exact PF-ODE or ELBO surrogate).

The score model works on ``z = (x - shift) / scale`` (about [-1, 1]); the prior
is on images ``x`` in data units (Jy/pixel for black holes), so
``log p_x(x) = log p_z(z) - D log(scale)``. ``normalised``:

- ``method="ode"``: ``"exact"`` -- the normalised density of the model's
  probability-flow ODE at ``t = eps`` (up to the ODE tolerance, and up to
  Hutchinson noise when ``divergence="hutchinson"``, whose mean is exact);
- ``method="elbo"``: ``"bound"`` -- a stochastic lower bound of that density.
- ``method="score"``: ``"gradient"`` -- no value at all (``log_prob`` is 0),
  only its gradient: the network's score at ``t = eps``, the gradient of
  ``log p_eps`` as far as the network has learnt it, deterministic, one
  forward pass of the network and no backward pass through it. Enough for a
  reverse-KL fit (its reparameterised gradient needs ``grad_x log p`` only),
  not for anything that compares values (MAP line searches, Renyi bounds,
  importance weights, model comparison).
"""

from __future__ import annotations

import math

import torch

from interfero.errors import InterferoError

from .base import Prior
from .elbo import TimeSampler, elbo
from .networks import NoisePredictionScore
from .ode import pf_ode_logp
from .sampling import denoised, noise_time, probability_flow, reverse_sde, tweedie_denoise
from .sde import SDE, _bcast

METHODS = ("ode", "elbo", "score")


class ScorePrior(Prior):
    """Image prior from a score model.

    Args:
        score_fn: a :class:`NoisePredictionScore` (a trained network) or any ``score(z, t)``
            (e.g. :class:`GaussianScore`), in transformed units ``z``.
        sde: the SDE the model was trained with.
        image_shape: ``(C, H, W)``.
        shift, scale: the data transform ``z = (x - shift) / scale``.
        method: ``"elbo"`` (default, cheap), ``"ode"`` (exact) or ``"score"`` (gradient only).
        ode: keyword arguments of :func:`priors.ode.pf_ode_logp` (``divergence``, ``probes``,
            ``gradient``, ``rtol``, ``atol``, ...).
        elbo: keyword arguments of :func:`priors.elbo.elbo` (``draws``, ``importance``).
        fov_uas: field of view the prior was trained for (None for unit-free images).
        training_data: the record of its training set (``kind``, ``fov_uas``, ...), if known.
    """

    def __init__(self, score_fn, sde: SDE, image_shape, shift: float = 0.0, scale: float = 1.0,
                 method: str = "elbo", ode: dict | None = None, elbo: dict | None = None,
                 fov_uas: float | None = None, name: str = "score", training_data: dict | None = None) -> None:
        super().__init__(image_shape)
        if method not in METHODS:
            raise InterferoError(f"unknown score-prior method {method!r} (choose from {', '.join(METHODS)})")
        if not scale > 0:
            raise InterferoError("score-prior scale must be > 0")
        self.score_model = score_fn
        self.sde = sde
        self.shift, self.scale = float(shift), float(scale)
        self.method = method
        self.ode_kwargs = {"divergence": "hutchinson", "probes": 1, "gradient": "adjoint", "rtol": 1e-3,
                           "atol": 1e-3} | (ode or {})
        self.elbo_kwargs = {"draws": 8, "importance": True} | (elbo or {})
        self.fov_uas = fov_uas
        self.name = name
        self.training_data = dict(training_data) if training_data else None
        self._sampler = TimeSampler(sde, self.elbo_kwargs.get("importance", True))
        self.last_nfe: int | None = None
        self.last_probe_sem: torch.Tensor | None = None  # nats, per image, of the last Hutchinson log p

    @property
    def eps_std(self) -> float:
        """The std of the white Gaussian by which the density ``p_eps`` smooths the training images, in data
        units (Jy/pixel for the black-hole priors; ``std(eps) * scale``, 0.0012 for the shipped ones): every
        posterior sample under this prior carries pixel-scale scatter of this size where the data allow it."""
        return float(self.sde.coefficients(torch.tensor([self.sde.eps], dtype=torch.float64))[1][0]) * self.scale

    def with_estimator(self, method: str | None = None, ode: dict | None = None,
                       elbo: dict | None = None) -> ScorePrior:
        """The same prior (network shared, not copied) with another log p estimator or its settings."""
        return ScorePrior(self.score_model, self.sde, self.image_shape, self.shift, self.scale,
                          method=method or self.method, ode=self.ode_kwargs | (ode or {}),
                          elbo=self.elbo_kwargs | (elbo or {}), fov_uas=self.fov_uas, name=self.name,
                          training_data=self.training_data)

    @property
    def normalised(self) -> str:  # type: ignore[override]
        return {"ode": "exact", "elbo": "bound", "score": "gradient"}[self.method]

    def to_z(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale

    def from_z(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale + self.shift

    def noise(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise ``-std(t) score(z, t)``."""
        if isinstance(self.score_model, NoisePredictionScore):
            return self.score_model.noise(z, t)
        _, std = self.sde.coefficients(t)
        return -_bcast(std, z) * self.score_model(z, t)

    def log_prob(self, x: torch.Tensor, method: str | None = None, generator: torch.Generator | None = None):
        self.check(x)
        method = method or self.method
        if method == "score":  # value 0, gradient score(x, eps): the network is not differentiated
            with torch.no_grad():
                s = self.score(x)
            return (s * (x - x.detach())).flatten(1).sum(1)
        z = self.to_z(x)
        logdet = -x[0].numel() * math.log(self.scale)
        if method == "ode":
            res = pf_ode_logp(self.score_model, self.sde, z, generator=generator, **self.ode_kwargs)
            self.last_nfe, self.last_probe_sem = res.nfe_forward, res.probe_sem
            return res.logp + logdet
        if method == "elbo":
            importance = self.elbo_kwargs.get("importance", True)
            if self._sampler.importance != importance:
                self._sampler = TimeSampler(self.sde, importance)
            return elbo(self.noise, self.sde, z, generator=generator, sampler=self._sampler,
                        **{k: v for k, v in self.elbo_kwargs.items() if k != "importance"}) + logdet
        raise InterferoError(f"unknown score-prior method {method!r} (choose from {', '.join(METHODS)})")

    def score(self, x: torch.Tensor, t: float | None = None) -> torch.Tensor:
        """The model score ``grad_x log p_t`` at ``t`` (default ``eps``), in data units."""
        self.check(x)
        z = self.to_z(x)
        tt = self.sde.time_tensor(self.sde.eps if t is None else t, z)
        return self.score_model(z, tt) / self.scale

    def denoise(self, x_noisy: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The model's MMSE denoiser in data units: ``E[x | x + sigma n = x_noisy]`` for white Gaussian noise
        of std ``sigma`` (data units, a number or one per image), by Tweedie's formula at the time whose
        noise-to-signal ratio is ``sigma / scale``. Noise below the model's smallest level (``std(eps) /
        alpha(eps)``, 0.0105 scale for the VP SDE) is treated as that level. Differentiable."""
        sig = torch.as_tensor(sigma, dtype=torch.float64)
        if not bool(torch.all(torch.isfinite(sig))) or bool(torch.any(sig <= 0)):
            raise InterferoError(f"denoiser noise level must be finite and > 0, got {sigma}")
        t = noise_time(self.sde, sig / self.scale).to(x_noisy.dtype)
        t = t.expand(x_noisy.shape[0]) if t.ndim == 0 else t
        alpha, _ = self.sde.coefficients(t)
        z0 = denoised(self.score_model, self.sde, _bcast(alpha, x_noisy) * self.to_z(x_noisy), t)
        return self.from_z(z0)

    @torch.no_grad()
    def sample(self, n: int, steps: int = 500, generator: torch.Generator | None = None, batch: int = 256,
               progress: bool = False, sampler: str = "sde", rtol: float = 1e-3, denoise: bool = True) -> torch.Tensor:
        """``n`` images in data units: ``sampler="sde"`` (reverse SDE, Euler-Maruyama, ``steps`` steps)
        or ``"ode"`` (the probability-flow ODE, dopri5 at ``rtol``; deterministic given the start).

        ``denoise``: finish with Tweedie's formula at ``eps`` (:func:`priors.sampling.tweedie_denoise`),
        i.e. return draws of ``E[x(0) | x(eps)]`` rather than of ``p_eps``; off, the samples are from the
        model density itself (the one ``log_prob`` scores), residual noise of std ``sigma(eps)`` included."""
        if sampler not in ("sde", "ode"):
            raise InterferoError(f"unknown sampler {sampler!r} (choose from sde, ode)")
        out = []
        for start in range(0, n, batch):
            m = min(batch, n - start)
            z = self.sde.prior_sampling((m, *self.image_shape), generator=generator)
            if sampler == "sde":
                # a draw of x(eps), last step's noise included: Tweedie's formula below assumes one
                z = reverse_sde(self.score_model, self.sde, z, steps, generator, progress=progress, denoise=False)
            else:
                z = probability_flow(self.score_model, self.sde, z, rtol=rtol, atol=rtol)
            if denoise:
                z = tweedie_denoise(self.score_model, self.sde, z)
            out.append(self.from_z(z))
        return torch.cat(out)
