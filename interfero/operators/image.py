"""Image-restoration operators on the shared contract.

All take unit-free images ``(B, C, H, W)`` and default to Gaussian noise.

- :class:`Denoising`: the identity.
- :class:`GaussianBlur`: circular convolution with a normalised Gaussian
  kernel (computed with the FFT, so the adjoint is exact).
- :class:`LowFrequencyDFT`: the ``n x n`` lowest spatial frequencies of the
  orthonormal 2-D DFT, measured as real and imaginary parts
  (``y`` has shape ``(B, C, 2, n, n)``).
- :class:`Inpainting`: the pixels where a mask is true (``y`` has shape
  ``(B, n_observed)``); :func:`box_inpainting` and
  :func:`random_inpainting` build the mask.
- :class:`MatrixOperator`: any dense matrix on the flattened image.
"""

from __future__ import annotations

import math

import torch

from ..errors import InterferoError
from .base import GaussianNoise, LinearOperator, NoiseModel


class Denoising(LinearOperator):
    """``y = x + noise``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image(x)
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y


class GaussianBlur(LinearOperator):
    """Circular convolution with a Gaussian of standard deviation ``sigma_px`` pixels."""

    def __init__(self, image_shape, sigma_px: float = 1.0, noise: NoiseModel | None = None, eps: float = 1e-3):
        super().__init__(image_shape, noise)
        if not (sigma_px > 0 and math.isfinite(sigma_px)):
            raise InterferoError(f"blur width must be > 0 pixels, got {sigma_px}")
        _, h, w = self.image_shape
        fy = torch.fft.fftfreq(h, dtype=torch.float64)
        fx = torch.fft.rfftfreq(w, dtype=torch.float64)
        # Fourier transform of a periodised, normalised Gaussian (exact for sigma << size)
        tf = torch.exp(-2 * math.pi**2 * sigma_px**2 * (fy[:, None] ** 2 + fx[None, :] ** 2))
        self.register_buffer("transfer", tf)
        self.eps = float(eps)
        self.sigma_px = float(sigma_px)

    def _apply(self, x: torch.Tensor, tf: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(x) * tf, s=x.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image(x)
        return self._apply(x, self.const("transfer", x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._apply(y, self.const("transfer", y))  # real, symmetric kernel: self-adjoint

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Tikhonov-regularised deconvolution ``T / (T^2 + eps)``."""
        tf = self.const("transfer", y)
        return self._apply(y, tf / (tf**2 + self.eps))


class LowFrequencyDFT(LinearOperator):
    """Keep the ``n x n`` lowest frequencies of the orthonormal DFT (real and imaginary parts)."""

    def __init__(self, image_shape, n: int, noise: NoiseModel | None = None):
        super().__init__(image_shape, noise)
        _, h, w = self.image_shape
        if not (1 <= n <= min(h, w)):
            raise InterferoError(f"number of kept frequencies per axis must be in 1..{min(h, w)}, got {n}")
        self.n = int(n)
        fy = torch.fft.fftfreq(h) * h
        fx = torch.fft.fftfreq(w) * w
        lo, hi = -(n // 2), (n - 1) // 2  # n frequencies centred on zero
        iy = torch.nonzero((fy >= lo) & (fy <= hi)).flatten()
        ix = torch.nonzero((fx >= lo) & (fx <= hi)).flatten()
        iy = iy[torch.argsort(fy[iy])]
        ix = ix[torch.argsort(fx[ix])]
        self.register_buffer("iy", iy)
        self.register_buffer("ix", ix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image(x)
        f = torch.fft.fft2(x, norm="ortho")
        f = f[..., self.iy, :][..., self.ix]
        return torch.stack([f.real, f.imag], dim=2)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        _, h, w = self.image_shape
        z = torch.complex(y[:, :, 0], y[:, :, 1])
        full = torch.zeros(y.shape[0], y.shape[1], h, w, dtype=z.dtype, device=y.device)
        full[:, :, self.iy[:, None], self.ix[None, :]] = z
        return torch.fft.ifft2(full, norm="ortho").real

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Zero-filled inverse DFT (the minimum-norm image for Hermitian-consistent data)."""
        return self.adjoint(y)


class Inpainting(LinearOperator):
    """Observe the pixels where ``mask`` (shape ``(C, H, W)``, boolean) is true."""

    def __init__(self, mask: torch.Tensor, noise: NoiseModel | None = None):
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.ndim != 3:
            raise InterferoError(f"inpainting mask must have shape (C, H, W), got {tuple(mask.shape)}")
        super().__init__(tuple(mask.shape), noise)
        if int(mask.sum()) == 0:
            raise InterferoError("inpainting mask observes no pixel")
        self.register_buffer("index", torch.nonzero(mask.flatten()).flatten())

    @property
    def mask(self) -> torch.Tensor:
        m = torch.zeros(math.prod(self.image_shape), dtype=torch.bool)
        m[self.index] = True
        return m.view(self.image_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image(x)
        return x.reshape(x.shape[0], -1)[:, self.index]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(y.shape[0], math.prod(self.image_shape), dtype=y.dtype, device=y.device)
        out[:, self.index] = y
        return out.view(y.shape[0], *self.image_shape)

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Observed pixels in place, zeros elsewhere."""
        return self.adjoint(y)


def box_inpainting(image_shape, box: tuple[int, int, int, int], noise: NoiseModel | None = None) -> Inpainting:
    """Hide the box ``(top, left, height, width)`` (in pixels) of every channel."""
    c, h, w = image_shape
    top, left, bh, bw = (int(v) for v in box)
    if bh <= 0 or bw <= 0 or top < 0 or left < 0 or top + bh > h or left + bw > w:
        raise InterferoError(f"box {box} does not fit inside a {h}x{w} image")
    mask = torch.ones(c, h, w, dtype=torch.bool)
    mask[:, top : top + bh, left : left + bw] = False
    return Inpainting(mask, noise)


def random_inpainting(
    image_shape, fraction_observed: float, seed: int = 0, noise: NoiseModel | None = None
) -> Inpainting:
    """Observe a random ``fraction_observed`` of the pixels (the same pixels in every channel)."""
    if not (0 < fraction_observed <= 1):
        raise InterferoError(f"observed fraction must be in (0, 1], got {fraction_observed}")
    c, h, w = image_shape
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(h, w, generator=g) < fraction_observed
    return Inpainting(keep.expand(c, h, w).clone(), noise)


__all__ = [
    "Denoising",
    "GaussianBlur",
    "LowFrequencyDFT",
    "Inpainting",
    "box_inpainting",
    "random_inpainting",
    "GaussianNoise",
]


class MatrixOperator(LinearOperator):
    """``y = A vec(x)`` for a dense real matrix ``A`` of shape ``(M, C*H*W)`` (``y`` has shape ``(B, M)``).

    The general linear-Gaussian problem (small analytic checks, toy posteriors);
    ``pseudo_inverse`` is the least-squares minimum-norm image ``A^+ y``.
    """

    def __init__(self, image_shape, matrix, noise: NoiseModel | None = None):
        super().__init__(image_shape, noise)
        a = torch.as_tensor(matrix, dtype=torch.float64)
        d = math.prod(self.image_shape)
        if a.ndim != 2 or a.shape[1] != d:
            raise InterferoError(f"matrix must have shape (M, {d}) for images {self.image_shape}, got {tuple(a.shape)}")
        if not torch.isfinite(a).all():
            raise InterferoError("matrix has NaN or infinite entries")
        self.register_buffer("matrix", a)
        self.register_buffer("pinv", torch.linalg.pinv(a))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image(x)
        return x.reshape(x.shape[0], -1) @ self.const("matrix", x).T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y @ self.const("matrix", y)).reshape(y.shape[0], *self.image_shape)

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (y @ self.const("pinv", y).T).reshape(y.shape[0], *self.image_shape)
