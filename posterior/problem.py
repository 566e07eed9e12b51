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


class InverseProblem:
    """``y = A(x) + n`` with prior ``p(x)``: ``operator`` (its ``noise`` the likelihood), ``y``, ``prior``;
    optional multipliers of the two log-densities and a starting image ``init``."""

    def __init__(self, operator, y, prior: Prior, data_weight: float = 1.0, prior_weight: float = 1.0,
                 init: torch.Tensor | None = None) -> None:
        if tuple(prior.image_shape) != tuple(operator.image_shape):
            raise InterferoError(
                f"prior is for images of shape {tuple(prior.image_shape)},"
                f" the operator for {tuple(operator.image_shape)}"
            )
        self.operator, self.y, self.prior = operator, y, prior
        self.data_weight, self.prior_weight = float(data_weight), float(prior_weight)
        self.init = None if init is None else init.reshape(-1, *self.operator.image_shape)

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
        """Where MAP, PnP-ADMM and SDEdit start, ``(B, C, H, W)`` float32: ``init`` if given (``reconstruct``
        gives a Gaussian blob of the zero-baseline flux), else the operator's pseudo-inverse of the data (one
        image per row of ``y``: a batch of data sets, one per independent run, gives one start each)."""
        with torch.no_grad():
            x = self.init if self.init is not None else self.operator.pseudo_inverse(self.y)
        x = x.to(torch.float32)
        if not bool(torch.all(torch.isfinite(x))):
            raise InterferoError("the pseudo-inverse of the data has NaN or infinite pixels")
        return x

    def likelihood_curvature(self, x_ref: torch.Tensor, iters: int = 30, seed: int = 0) -> float:
        """The likelihood's curvature (1 / image units^2) around ``x_ref``: how strongly the data pin an image.

        - a linear operator: the largest eigenvalue of the Gauss-Newton Hessian ``J^T W J`` of
          ``-log p(y | x)`` (extra terms such as a total-flux term included) for data equal to ``x_ref``'s
          own measurements, by power iteration on Hessian-vector products; ``||A||^2 / sigma^2`` for
          Gaussian noise of std ``sigma``;
        - a nonlinear one (closure phases, log closure amplitudes): the median over measurements of the
          deviance that white image noise of std ``s`` causes, over ``s^2``. The largest eigenvalue would be
          set by visibilities near a null, whose closure phases swing wildly, and say nothing of the
          typical measurement.

        ``curvature^-1/2`` is the measurement noise as an image-noise level: DPS's step scale and Score-ALD's
        annealed data weight."""
        from interfero.operators import LinearOperator

        x_ref = x_ref[:1].detach().to(torch.float64)
        with torch.no_grad():
            y_ref = self.operator(x_ref)
        if isinstance(self.operator, LinearOperator):
            lam = self._largest_curvature(x_ref, y_ref, iters, seed)
        else:
            g = torch.Generator().manual_seed(seed)
            s = 1e-3 * float(x_ref.abs().max().clamp_min(1e-30))
            x = x_ref + s * torch.randn((8, *self.image_shape), generator=g, dtype=torch.float64)
            deviance_terms = getattr(self.operator.noise, "deviance_terms", None)
            if deviance_terms is None:
                raise InterferoError(f"the noise model {type(self.operator.noise).__name__} gives no"
                                     " per-measurement deviance, which this method needs")
            with torch.no_grad():
                terms = deviance_terms(self.operator(x), y_ref)
            lam = float(terms.mean(0).median()) / s**2
        if not (math.isfinite(lam) and lam > 0):
            raise InterferoError("the likelihood has no finite positive curvature at the reference image")
        return lam

    def noise_level(self) -> float:
        """The measurement noise as an image-noise level (image units): ``curvature^-1/2`` at the start image
        (:meth:`initial_image`); ``sigma / ||A||`` for a linear operator with Gaussian noise."""
        return self.likelihood_curvature(self.initial_image()) ** -0.5

    def _largest_curvature(self, x_ref: torch.Tensor, y_ref, iters: int, seed: int) -> float:
        def grad(x):
            loss = -self.operator.log_likelihood(x, y_ref).sum()
            return torch.autograd.grad(loss, x, create_graph=True)[0]

        g = torch.Generator().manual_seed(seed)
        v = torch.randn(x_ref.shape, generator=g, dtype=torch.float64)
        v = v / v.norm()
        lam = 0.0
        with torch.enable_grad():
            for _ in range(iters):
                x = x_ref.clone().requires_grad_(True)
                hv = torch.autograd.grad((grad(x) * v).sum(), x)[0]
                lam = float((hv * v).sum())
                norm = float(hv.norm())
                if not (math.isfinite(norm) and norm > 0):
                    break
                v = hv / norm
        return lam
