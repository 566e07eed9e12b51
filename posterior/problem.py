"""The inverse problem every inference method solves: an operator with its noise model, data and a prior.

:class:`InverseProblem` is built once (``reconstruct`` from a uvfits file, ``restore`` from an image);
whichever method then runs (:mod:`posterior.methods`) sees only this object. Its ``log_prob`` is
the unnormalised posterior ``w_data log p(y | x) + w_prior log p(x)`` (normflows' target API), so DPI
uses it as its target.
"""

from __future__ import annotations

import math

import torch

from interfero.errors import InterferoError
from priors.base import Prior


def measurement_count(y) -> int:
    """Real numbers in one measurement ``y`` (batch axis excluded; complex values count twice; a
    :class:`interfero.operators.VLBIData` counts every product)."""
    parts = [y[k] for k in y.products()] if hasattr(y, "products") else [y]
    return sum(p[0].numel() * (2 if p.is_complex() else 1) for p in parts)


class InverseProblem:
    """``y = A(x) + n`` with prior ``p(x)``: ``operator`` (its ``noise`` the likelihood), ``y``, ``prior``."""

    def __init__(self, operator, y, prior: Prior, data_weight: float = 1.0, prior_weight: float = 1.0) -> None:
        if tuple(prior.image_shape) != tuple(operator.image_shape):
            raise InterferoError(
                f"prior is for images of shape {tuple(prior.image_shape)},"
                f" the operator for {tuple(operator.image_shape)}"
            )
        self.operator, self.y, self.prior = operator, y, prior
        self.data_weight, self.prior_weight = float(data_weight), float(prior_weight)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.operator.image_shape)

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        return self.operator.log_likelihood(x, self.y)

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        return self.prior.log_prob(x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.data_weight * self.log_likelihood(x) + self.prior_weight * self.log_prior(x)

    def saturated_log_likelihood(self) -> float:
        """The likelihood's largest value for these data (see ``Operator.saturated_log_likelihood``)."""
        return self.operator.saturated_log_likelihood(self.y)

    def score_prior(self, method: str):
        """The prior as a :class:`priors.score_prior.ScorePrior`, or a one-line error naming ``method``."""
        from priors.score_prior import ScorePrior

        if not isinstance(self.prior, ScorePrior):
            raise InterferoError(f"method {method} needs a score-based prior (a trained or shipped one, e.g."
                                 f" --prior default), not {self.prior.name!r}")
        return self.prior

    def initial_image(self) -> torch.Tensor:
        """The operator's pseudo-inverse of the data, ``(1, C, H, W)`` float32 (MAP, PnP and SDEdit start here)."""
        with torch.no_grad():
            x = self.operator.pseudo_inverse(self.y)
        x = x[:1].to(torch.float32)
        if not bool(torch.all(torch.isfinite(x))):
            raise InterferoError("the pseudo-inverse of the data has NaN or infinite pixels")
        return x

    @torch.no_grad()
    def perturbation_chi2(self, x_ref: torch.Tensor, noise_std: float, probes: int = 8, seed: int = 0) -> float:
        """Deviance per measurement that white image noise of std ``noise_std`` (image units) around ``x_ref``
        causes in noiseless data of ``x_ref``: ``s^2 mean_k |grad y_k|^2 / sigma_k^2`` for a linear operator
        with Gaussian noise, i.e. the image noise propagated through the operator in units of the
        measurement noise (Score-ALD's annealed data weight)."""
        g = torch.Generator().manual_seed(seed)
        x_ref = x_ref[:1].expand(probes, *self.image_shape).to(torch.float64)
        y_ref = self.operator(x_ref[:1])
        x = x_ref + noise_std * torch.randn(x_ref.shape, generator=g, dtype=torch.float64)
        noise = self.operator.noise
        dev = -2 * (noise.log_likelihood(self.operator(x), y_ref) - noise.log_likelihood(y_ref, y_ref))
        out = float(dev.mean()) / measurement_count(y_ref)
        if not math.isfinite(out):
            raise InterferoError("the data's response to image noise is not finite")
        return out
