"""Classical priors: Gaussian (exact), total variation and maximum entropy (unnormalised).

- :class:`GaussianPrior` ``N(mean, cov)``: normalised log-density and score
  in closed form; :meth:`GaussianPrior.diffused` gives the exact score of the
  diffused density for any SDE (the reference of the score-based tests).
- :class:`TVPrior`: ``-weight * sum_pixels sqrt(|grad x|^2 + delta^2)``
  (isotropic total variation with forward differences, smoothed by ``delta``
  so it is differentiable). Invariant to adding a constant, hence improper:
  unnormalised.
- :class:`MEMPrior`: ``weight * S(x)`` with the relative entropy
  ``S = -sum x log(x / ref)`` against a reference image ``ref`` (ehtim's
  "simple" entropy; pixels are floored at ``floor`` times the reference peak
  so it is defined for every image). Unnormalised.
- :class:`SumPrior`: the sum of several priors' log-densities (e.g. TV +
  MEM, as in regularised maximum likelihood); :func:`image_regulariser`
  builds the flux-normalised TV / MEM / TV + MEM prior that
  ``interfero reconstruct --prior tv|mem|tv+mem`` uses.

Image units are the caller's (Jy/pixel for interferometry); weights carry the
inverse units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from interfero.errors import InterferoError

from .base import Prior


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


class GaussianPrior(Prior):
    """``N(mean, cov)`` over images of ``mean.shape`` (float64 internally)."""

    normalised = "exact"

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float64)
        if mean.ndim != 3:
            raise InterferoError(f"Gaussian prior mean must be (C, H, W), got {tuple(mean.shape)}")
        super().__init__(tuple(mean.shape))
        d = mean.numel()
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if cov.shape != (d, d):
            raise InterferoError(f"covariance must be ({d}, {d}), got {tuple(cov.shape)}")
        lam, vecs = torch.linalg.eigh(0.5 * (cov + cov.T))
        if lam.min() <= 0:
            raise InterferoError("Gaussian prior covariance must be positive definite")
        self.register_buffer("mean", mean)
        self.register_buffer("cov", cov)
        self.register_buffer("lam", lam)
        self.register_buffer("vecs", vecs)

    def log_prob(self, x):
        self.check(x)
        r = (_flat(x).double() - self.mean.reshape(1, -1)) @ self.vecs
        d = r.shape[1]
        out = -0.5 * ((r**2 / self.lam).sum(-1) + torch.log(self.lam).sum() + d * math.log(2 * math.pi))
        return out.to(x.dtype)

    def score(self, x):
        self.check(x)
        r = (_flat(x).double() - self.mean.reshape(1, -1)) @ self.vecs
        return (-(r / self.lam) @ self.vecs.T).reshape(x.shape).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.lam.numel(), generator=generator, dtype=torch.float64)
        return self.mean[None] + ((z * self.lam.sqrt()) @ self.vecs.T).reshape(n, *self.image_shape)

    def standardised(self, shift: float, scale: float) -> GaussianPrior:
        """The law of ``z = (x - shift) / scale`` (a score model's units, :class:`priors.score_prior.ScorePrior`)."""
        return GaussianPrior((self.mean - shift) / scale, self.cov / scale**2)

    def diffused(self, sde):
        """The exact score ``grad log p_t`` of this Gaussian diffused by ``sde`` (a :class:`GaussianScore`)."""
        from .networks import GaussianScore

        return GaussianScore(self.mean, self.cov, sde)


class GaussianMixturePrior(Prior):
    """Isotropic Gaussian mixture ``sum_k w_k N(mu_k, s_k^2 I)`` over images of ``mu_k.shape`` (exact)."""

    normalised = "exact"

    def __init__(self, weights, means, stds) -> None:
        from .networks import GaussianMixtureScore

        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 4:
            raise InterferoError(f"mixture means must be (K, C, H, W), got {tuple(means.shape)}")
        super().__init__(tuple(means.shape[1:]))
        self.weights, self.means, self.stds = (torch.as_tensor(v, dtype=torch.float64) for v in (weights, means, stds))
        self._exact = GaussianMixtureScore(self.weights, self.means, self.stds, _NoDiffusion())

    def log_prob(self, x):
        self.check(x)
        return self._exact.log_prob(x).to(x.dtype)

    def score(self, x):
        self.check(x)
        return self._exact(x, torch.zeros(x.shape[0], dtype=torch.float64))

    def diffused(self, sde):
        """The exact score of this mixture diffused by ``sde`` (a :class:`GaussianMixtureScore`)."""
        from .networks import GaussianMixtureScore

        return GaussianMixtureScore(self.weights, self.means, self.stds, sde)


class _NoDiffusion:
    """``alpha = 1, std = 0`` at every t: the undiffused density."""

    @staticmethod
    def coefficients(t):
        t = torch.as_tensor(t)
        return torch.ones_like(t), torch.zeros_like(t)


class TVPrior(Prior):
    """Smoothed isotropic total variation, ``log p = -weight * TV_delta(x)`` (unnormalised)."""

    def __init__(self, image_shape, weight: float = 1.0, delta: float = 1e-6) -> None:
        super().__init__(image_shape)
        if not weight > 0 or not delta > 0:
            raise InterferoError("TV weight and delta must be > 0")
        self.weight, self.delta = float(weight), float(delta)

    def log_prob(self, x):
        self.check(x)
        dx = torch.diff(x, dim=-1, append=x[..., -1:])
        dy = torch.diff(x, dim=-2, append=x[..., -1:, :])
        return -self.weight * _flat(torch.sqrt(dx**2 + dy**2 + self.delta**2)).sum(-1)


class MEMPrior(Prior):
    """Relative entropy to ``reference``, ``log p = weight * (-sum x log(x / ref))`` (unnormalised)."""

    def __init__(self, reference: torch.Tensor, weight: float = 1.0, floor: float = 1e-8) -> None:
        reference = torch.as_tensor(reference, dtype=torch.float64)
        if reference.ndim != 3:
            raise InterferoError(f"MEM reference must be (C, H, W), got {tuple(reference.shape)}")
        if not torch.all(reference > 0):
            raise InterferoError("MEM reference image must be > 0 everywhere")
        super().__init__(tuple(reference.shape))
        self.weight, self.floor = float(weight), float(floor) * float(reference.max())
        self.register_buffer("reference", reference)

    def log_prob(self, x):
        self.check(x)
        ref = self.reference.to(x.dtype)[None]
        xc = torch.clamp(x, min=self.floor)
        return self.weight * _flat(-xc * torch.log(xc / ref)).sum(-1)


class L1Prior(Prior):
    """Sparsity, ``log p = -weight * sum |x|`` (a Laplace prior up to its normalisation; unnormalised)."""

    def __init__(self, image_shape, weight: float = 1.0, delta: float = 1e-8) -> None:
        super().__init__(image_shape)
        if not weight > 0 or not delta > 0:
            raise InterferoError("L1 weight and delta must be > 0")
        self.weight, self.delta = float(weight), float(delta)

    def log_prob(self, x):
        self.check(x)
        return -self.weight * _flat(torch.sqrt(x**2 + self.delta**2)).sum(-1)


class SumPrior(Prior):
    """``log p(x) = sum_k log p_k(x)`` over priors of the same image shape (unnormalised)."""

    def __init__(self, priors: Sequence[Prior], name: str = "sum") -> None:
        priors = list(priors)
        if not priors:
            raise InterferoError("a sum of priors needs at least one prior")
        shapes = {p.image_shape for p in priors}
        if len(shapes) != 1:
            raise InterferoError(f"priors in a sum must share one image shape, got {sorted(shapes)}")
        super().__init__(priors[0].image_shape)
        self.priors = torch.nn.ModuleList(priors)
        self.name = name

    def log_prob(self, x):
        self.check(x)
        return sum(p.log_prob(x) for p in self.priors)


REGULARISERS = ("tv", "mem", "tv+mem", "l1")


def image_regulariser(kind: str, reference: torch.Tensor, weight: float = 1000.0) -> SumPrior:
    """Total variation, maximum entropy or sparsity normalised by the total flux, the classical RML regularisers
    as a prior.

    ``log p(x) = -weight * TV(x) / F`` (``"tv"``), ``weight * S(x; reference) / F`` (``"mem"``), their sum
    (``"tv+mem"``) or ``-weight * sum |x| / F`` (``"l1"``), where ``F = reference.sum()`` (Jy) makes them
    dimensionless, so ``weight`` (nats) does not depend on the flux or the image units. ``reference``
    (``(C, H, W)``, Jy/pixel, > 0) is MEM's reference image and sets the image shape.
    ``TV(x) / F`` is about ``2 / r`` for a uniform disk of radius ``r`` pixels.
    """
    parts = kind.split("+")
    if kind not in REGULARISERS:
        raise InterferoError(f"unknown regulariser {kind!r}: choose one of {', '.join(REGULARISERS)}")
    if not (math.isfinite(weight) and weight > 0):
        raise InterferoError(f"regulariser weight must be > 0, got {weight}")
    reference = torch.as_tensor(reference, dtype=torch.float64)
    flux = float(reference.sum())
    if not (math.isfinite(flux) and flux > 0):
        raise InterferoError(f"regulariser reference image must have a positive total flux, got {flux}")
    priors: list[Prior] = []
    if "tv" in parts:
        # delta: 1e-6 of the mean pixel, far below any real gradient
        priors.append(TVPrior(tuple(reference.shape), weight=weight / flux, delta=1e-6 * flux / reference.numel()))
    if "mem" in parts:
        priors.append(MEMPrior(reference, weight=weight / flux))
    if "l1" in parts:
        priors.append(L1Prior(tuple(reference.shape), weight=weight / flux, delta=1e-6 * flux / reference.numel()))
    return SumPrior(priors, name=kind)
