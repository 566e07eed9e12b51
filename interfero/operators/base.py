"""The one operator contract shared by every forward model.

Images are tensors ``(B, C, H, W)``. An :class:`Operator` maps them to
measurements ``y`` (a tensor, or a small dataclass of tensors with one field
per data product) with a noiseless, differentiable :meth:`Operator.forward`;
the noise model is a separate object (:class:`GaussianNoise`,
:class:`PoissonNoise`, or a product-specific one) that gives
``sample(y_clean, generator)`` and ``log_likelihood(y_pred, y_obs) -> (B,)``, and
optionally ``deviance_terms(y_pred, y_obs) -> (B, M)``, the per-measurement deviance
``-2 [log p(y_k | y_pred_k) - log p(y_k | y_k)]`` (chi^2 terms for Gaussian noise), which
the baselines' data scale needs for nonlinear operators.
Linear operators add :meth:`LinearOperator.adjoint`. Every operator has a
naive inversion :meth:`Operator.pseudo_inverse` for initialisation and plots.

Operators are ``torch.nn.Module``s: their constant tensors are buffers kept in
float64 and cast (once, cached) to the dtype and device of the input, so the
same operator serves float32 and float64 images.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod

import torch

from ..errors import InterferoError


class NoiseModel(torch.nn.Module, metaclass=ABCMeta):
    """A measurement noise model: sampling and the log-likelihood."""

    @abstractmethod
    def sample(self, y, generator: torch.Generator | None = None):
        """Noisy measurements around the noiseless ``y``."""

    @abstractmethod
    def log_likelihood(self, y_pred, y_obs) -> torch.Tensor:
        """``log p(y_obs | y_pred)`` per batch item, shape ``(B,)``."""


def _batch_sum(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(-1)


class GaussianNoise(NoiseModel):
    """Independent Gaussian noise with standard deviation ``sigma``.

    ``sigma`` is a scalar or a tensor broadcastable to one measurement (without
    the batch axis). Complex measurements get independent noise of standard
    deviation ``sigma`` on the real and on the imaginary part.
    ``log_likelihood`` is the normalised log-density summed per batch item.
    """

    def __init__(self, sigma: float | torch.Tensor = 1.0) -> None:
        super().__init__()
        s = torch.as_tensor(sigma, dtype=torch.float64)
        if not torch.all(torch.isfinite(s)) or torch.any(s <= 0):
            raise InterferoError("noise sigma must be finite and > 0")
        self.register_buffer("sigma", s)

    def _sigma(self, like: torch.Tensor) -> torch.Tensor:
        dt = like.real.dtype if like.is_complex() else like.dtype
        return self.sigma.to(device=like.device, dtype=dt)

    def sample(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        s = self._sigma(y)
        if y.is_complex():
            re = torch.randn(y.shape, generator=generator, dtype=y.real.dtype, device=y.device)
            im = torch.randn(y.shape, generator=generator, dtype=y.real.dtype, device=y.device)
            return y + s * torch.complex(re, im)
        return y + s * torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)

    def log_likelihood(self, y_pred: torch.Tensor, y_obs: torch.Tensor) -> torch.Tensor:
        s = self._sigma(y_pred)
        r = (y_pred - y_obs) / s
        sq = r.real**2 + r.imag**2 if r.is_complex() else r**2
        ncomp = 2 if r.is_complex() else 1
        logs = torch.log(s).expand(y_pred.shape[1:]).sum() if s.ndim else y_pred[0].numel() * torch.log(s)
        const = ncomp * (logs + 0.5 * y_pred[0].numel() * math.log(2 * math.pi))
        return -0.5 * _batch_sum(sq) - const

    def deviance_terms(self, y_pred: torch.Tensor, y_obs: torch.Tensor) -> torch.Tensor:
        r = (y_pred - y_obs) / self._sigma(y_pred)
        sq = r.real**2 + r.imag**2 if r.is_complex() else r**2
        return sq.reshape(sq.shape[0], -1)


class PoissonNoise(NoiseModel):
    """Poisson photon counts: ``y ~ Poisson(gain * A x) / gain``.

    The log-likelihood is the Poisson log-mass of the counts ``gain * y`` with
    rate ``gain * y_pred`` (clamped at 1e-12), summed per batch item.
    """

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        if not (gain > 0 and math.isfinite(gain)):
            raise InterferoError("Poisson gain must be finite and > 0")
        self.gain = float(gain)

    def sample(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        rate = (self.gain * y).clamp_min(0)
        return torch.poisson(rate, generator=generator) / self.gain

    def log_likelihood(self, y_pred: torch.Tensor, y_obs: torch.Tensor) -> torch.Tensor:
        rate = (self.gain * y_pred).clamp_min(1e-12)
        k = self.gain * y_obs
        return _batch_sum(k * torch.log(rate) - rate - torch.lgamma(k + 1))

    def deviance_terms(self, y_pred: torch.Tensor, y_obs: torch.Tensor) -> torch.Tensor:
        rate = (self.gain * y_pred).clamp_min(1e-12)
        k = (self.gain * y_obs).expand_as(rate)
        d = 2 * (torch.xlogy(k, k) - k * torch.log(rate) - k + rate)
        return d.reshape(d.shape[0], -1)


class Operator(torch.nn.Module, metaclass=ABCMeta):
    """A forward model ``x -> y`` on images of shape ``(B, *image_shape)``.

    Subclasses implement :meth:`forward`; ``noise`` is the measurement noise
    model. ``sample`` draws noisy measurements, ``log_likelihood`` scores them.
    """

    def __init__(self, image_shape: tuple[int, int, int], noise: NoiseModel | None = None) -> None:
        super().__init__()
        if len(image_shape) != 3 or any(int(s) <= 0 for s in image_shape):
            raise InterferoError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape}")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.noise = noise if noise is not None else GaussianNoise(1.0)
        self._cast_cache: dict = {}

    # ------------------------------------------------------------ helpers
    def check_image(self, x: torch.Tensor) -> None:
        """Raise a clear error unless ``x`` is a batch of this operator's images."""
        if not isinstance(x, torch.Tensor):
            raise InterferoError(f"{type(self).__name__}: image must be a torch tensor, got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            want = "(B, " + ", ".join(map(str, self.image_shape)) + ")"
            raise InterferoError(f"{type(self).__name__}: image shape {tuple(x.shape)} does not match {want}")
        if not x.is_floating_point():
            raise InterferoError(f"{type(self).__name__}: image must be a floating-point tensor")

    def const(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Buffer ``name`` cast to the real dtype and device of ``like`` (cached; an integer buffer, such as a
        closure index, keeps its type and only moves)."""
        buf = getattr(self, name)
        dt = like.real.dtype if like.is_complex() else like.dtype
        if buf.is_complex():
            dt = torch.complex64 if dt == torch.float32 else torch.complex128
        elif not buf.is_floating_point():
            dt = buf.dtype  # index buffers keep their integer type and only move
        if buf.dtype == dt and buf.device == like.device:
            return buf
        key = (name, dt, like.device, buf.data_ptr())
        if key not in self._cast_cache:
            self._cast_cache[key] = buf.to(device=like.device, dtype=dt)
        return self._cast_cache[key]

    # ----------------------------------------------------------- contract
    @abstractmethod
    def forward(self, x: torch.Tensor):
        """Noiseless, differentiable measurements of ``x``."""

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Noisy measurements of ``x``."""
        return self.noise.sample(self(x), generator)

    def log_likelihood(self, x: torch.Tensor, y) -> torch.Tensor:
        """``log p(y | x)`` for each image in the batch, shape ``(B,)``."""
        return self.noise.log_likelihood(self(x), y)

    def saturated_log_likelihood(self, y) -> float:
        """``log p(y | y_pred = y)``: the largest value the noise model gives these data (the reference of the
        deviance ``-2 [log p(y | x) - saturated]``, a chi^2 for Gaussian noise)."""
        with torch.no_grad():
            return float(self.noise.log_likelihood(y, y).reshape(-1)[0])

    def gauss_newton_hessian(self, x: torch.Tensor) -> torch.Tensor:
        """The Gauss-Newton Hessian ``J^T W J`` of ``-log p(y | x)`` at each image of ``x`` (``(B, D, D)``,
        float64, 1/Jy^2 for images in Jy/pixel, ``D`` the pixels): the exact Hessian of the likelihood of data
        equal to the image's own prediction, where the residual terms vanish (the Fisher information of the
        data at ``x``). This generic form takes it by automatic differentiation, ``D`` Hessian-vector
        products per image; operators with a closed-form Jacobian override it."""
        self.check_image(x)
        shape = self.image_shape
        out = []
        for xi in x.detach().to(torch.float64):
            with torch.no_grad():
                y0 = self(xi[None])

            def neg_log_lik(flat: torch.Tensor, y0=y0) -> torch.Tensor:
                return -self.log_likelihood(flat.reshape(1, *shape), y0).sum()

            h = torch.autograd.functional.hessian(neg_log_lik, xi.reshape(-1), vectorize=True)
            out.append(0.5 * (h + h.T))
        return torch.stack(out)

    @abstractmethod
    def pseudo_inverse(self, y) -> torch.Tensor:
        """A naive image from measurements, for initialisation and plots."""


class LinearOperator(Operator):
    """A linear operator with an adjoint (in the real inner product)."""

    @abstractmethod
    def adjoint(self, y) -> torch.Tensor:
        """The adjoint ``A^T y`` (real inner product), an image batch."""
