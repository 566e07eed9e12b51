"""Forward SDEs ``dx = f(x, t) dt + g(t) dw`` on ``t in [eps, T]`` (score_sde conventions).

Every SDE here has an affine drift ``f(x, t) = -0.5 b(t) x`` and a Gaussian
transition kernel ``p_0t(x_t | x_0) = N(alpha(t) x_0, std(t)^2 I)``;
:meth:`SDE.coefficients` gives ``(alpha, std)``. The prior ``pi`` at ``T`` is a
centred isotropic Gaussian with standard deviation :attr:`SDE.prior_std`.

- :class:`VPSDE`: variance preserving, ``beta(t) = beta_min + t (beta_max - beta_min)``
  with ``beta_min = 0.1``, ``beta_max = 20`` (DDPM's continuous limit).
- :class:`SubVPSDE`: the same drift, diffusion ``beta(t) (1 - exp(-2 int_0^t beta))``.
- :class:`VESDE`: variance exploding, ``std(t) = sigma_min (sigma_max/sigma_min)^t``.

``eps`` is the smallest time used by training, sampling and likelihoods
(default ``1e-3``): the densities of this package are those of ``x(eps)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from interfero.errors import InterferoError

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` of shape ``(B,)`` (or scalar) broadcast against ``x`` of shape ``(B, ...)``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    return t.reshape(-1, *([1] * (x.ndim - 1)))


class SDE(ABC):
    """A forward diffusion with Gaussian transition kernels."""

    name = "sde"
    T = 1.0

    def __init__(self, eps: float = 1e-3) -> None:
        if not 0 < eps < self.T:
            raise InterferoError(f"SDE eps must be in (0, {self.T}), got {eps}")
        self.eps = float(eps)

    # --- what each SDE defines -------------------------------------------------------
    @abstractmethod
    def drift_rate(self, t: torch.Tensor) -> torch.Tensor:
        """``b(t)`` in ``f(x, t) = -0.5 b(t) x``."""

    @abstractmethod
    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """``g(t)``."""

    @abstractmethod
    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha(t), std(t))`` of the kernel ``N(alpha x_0, std^2 I)``."""

    @property
    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the prior ``pi = N(0, prior_std^2 I)`` at ``T``."""

    @abstractmethod
    def int_drift_rate(self, t0: float, t1: float) -> float:
        """``int_t0^t1 b(t) dt`` (for the divergence of the drift)."""

    def config(self) -> dict:
        return {"name": self.name, "eps": self.eps}

    # --- generic -------------------------------------------------------------------------
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift ``f(x, t)`` (shape of x) and diffusion ``g(t)`` (shape of t)."""
        return -0.5 * _bcast(self.drift_rate(t), x) * x, self.diffusion(t)

    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``alpha(t) x`` and standard deviation ``std(t)`` of ``p_0t(. | x)``."""
        alpha, std = self.coefficients(t)
        return _bcast(alpha, x) * x, std

    def prior_sampling(self, shape, generator: torch.Generator | None = None, dtype=torch.float32, device=None):
        """Draws from ``pi``."""
        return self.prior_std * torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """``log pi(z)`` per batch item, shape ``(B,)``."""
        d = z[0].numel()
        s2 = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * s2) - 0.5 * z.reshape(z.shape[0], -1).pow(2).sum(-1) / s2

    def divergence_drift(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """``div_x f(x, t) = -0.5 b(t) dim``."""
        return -0.5 * self.drift_rate(t) * dim

    def probability_flow_drift(self, score_fn: ScoreFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``f(x, t) - 0.5 g(t)^2 score(x, t)``: the drift of the probability-flow ODE."""
        f, g = self.sde(x, t)
        return f - 0.5 * _bcast(g**2, x) * score_fn(x, t)

    def time_tensor(self, t: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
        return t.expand(like.shape[0]) if t.ndim == 0 else t


class _LinearBeta(SDE):
    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-3) -> None:
        super().__init__(eps)
        if not 0 < beta_min < beta_max:
            raise InterferoError("need 0 < beta_min < beta_max")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def config(self) -> dict:
        return {**super().config(), "beta_min": self.beta_min, "beta_max": self.beta_max}

    def drift_rate(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _int_beta(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def int_drift_rate(self, t0, t1):
        return float(self._int_beta(t1) - self._int_beta(t0))

    @property
    def prior_std(self) -> float:
        return 1.0


class VPSDE(_LinearBeta):
    """Variance-preserving SDE: ``g(t) = sqrt(beta(t))``, ``std^2 = 1 - alpha^2``."""

    name = "vp"

    def diffusion(self, t):
        return torch.sqrt(self.drift_rate(t))

    def coefficients(self, t):
        alpha = torch.exp(-0.5 * self._int_beta(t))
        return alpha, torch.sqrt(-torch.expm1(-self._int_beta(t)))


class SubVPSDE(_LinearBeta):
    """Sub-VP SDE: ``g(t)^2 = beta(t) (1 - exp(-2 int_0^t beta))``, ``std = 1 - alpha^2``."""

    name = "subvp"

    def diffusion(self, t):
        return torch.sqrt(self.drift_rate(t) * -torch.expm1(-2 * self._int_beta(t)))

    def coefficients(self, t):
        return torch.exp(-0.5 * self._int_beta(t)), -torch.expm1(-self._int_beta(t))


class VESDE(SDE):
    """Variance-exploding SDE: no drift, ``std(t) = sigma_min (sigma_max / sigma_min)^t``."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, eps: float = 1e-5) -> None:
        super().__init__(eps)
        if not 0 < sigma_min < sigma_max:
            raise InterferoError("need 0 < sigma_min < sigma_max")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def config(self) -> dict:
        return {**super().config(), "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def drift_rate(self, t):
        return torch.zeros_like(torch.as_tensor(t))

    def int_drift_rate(self, t0, t1):
        return 0.0

    def _sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def diffusion(self, t):
        return self._sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def coefficients(self, t):
        return torch.ones_like(torch.as_tensor(t)), self._sigma(t)

    @property
    def prior_std(self) -> float:
        return self.sigma_max


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def sde_from_config(config: dict) -> SDE:
    """Rebuilds an SDE from :meth:`SDE.config`."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in SDES:
        raise InterferoError(f"unknown SDE {name!r} (choose from {', '.join(SDES)})")
    try:
        return SDES[name](**config)
    except TypeError as err:
        raise InterferoError(f"bad SDE settings for {name!r}: {err}") from None
