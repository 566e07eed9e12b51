"""Complex visibilities of an image, in ehtim's conventions.

For an image ``I`` (Jy/pixel) of ``N x N`` pixels of size ``p`` radians, with
row ``i`` at ``y_i = (N/2 - 1/2 - i) p`` (row 0 is north) and column ``j`` at
``x_j = (N/2 - 1/2 - j) p`` (column 0 is east), the visibility at baseline
``(u, v)`` (wavelengths) is

    V(u, v) = P(u) P(v) sum_ij I_ij exp(+2 pi i (u x_j + v y_i)),

with ``P(u) = sinc^2(p u)`` the Fourier transform of ehtim's triangle pulse.
This is ``ehtim.observing.obs_helpers.ftmatrix`` exactly.

The dense DFT stacks real and imaginary rows into one real matrix (one real
matmul per batch). ``method='nufft'`` uses FINUFFT (optional extra
``interfero[nufft]``) for large images; it agrees with the DFT to its
tolerance and is differentiable through its adjoint.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InterferoError
from ..io import ImageGeometry
from .base import GaussianNoise, LinearOperator, NoiseModel


def pixel_coordinates(npix: int, psize_rad: float) -> np.ndarray:
    """Sky offsets (radians) of pixel centres along one axis, index 0 first (east / north)."""
    return (npix / 2.0 - 0.5 - np.arange(npix)) * psize_rad


def triangle_pulse_ft(u: np.ndarray, psize_rad: float) -> np.ndarray:
    """Fourier transform of the triangle pulse of width ``psize_rad`` at frequency ``u`` (wavelengths)."""
    return np.sinc(psize_rad * u) ** 2


def _dft_factors(u, v, geom: ImageGeometry):
    """Pixel coordinates (rad), u and v as float arrays, and the pulse transfer at (u, v)."""
    u = np.asarray(u, dtype=float)
    v = np.asarray(v, dtype=float)
    pulse = triangle_pulse_ft(u, geom.psize_rad) * triangle_pulse_ft(v, geom.psize_rad)
    return pixel_coordinates(geom.npix, geom.psize_rad), u, v, pulse


def dft_matrix(u: np.ndarray, v: np.ndarray, geom: ImageGeometry) -> np.ndarray:
    """Complex ``(N_vis, npix*npix)`` matrix, rows of the flattened (row-major) image."""
    c, u, v, pulse = _dft_factors(u, v, geom)
    ey = np.exp(2j * np.pi * np.outer(v, c))  # (N, rows)
    ex = np.exp(2j * np.pi * np.outer(u, c))  # (N, cols)
    return (pulse[:, None, None] * ey[:, :, None] * ex[:, None, :]).reshape(len(u), -1)


def visibilities(image: np.ndarray, u: np.ndarray, v: np.ndarray, geom: ImageGeometry) -> np.ndarray:
    """The same DFT for one numpy image, evaluated separably (no ``(M, N^2)`` matrix).

    ``V_k = P_k sum_i e^{2 pi i v_k y_i} sum_j I_ij e^{2 pi i u_k x_j}``: two
    small exponential tables and one ``(N, N) x (N, M)`` product.
    """
    c, u, v, pulse = _dft_factors(u, v, geom)
    ex = np.exp(2j * np.pi * np.outer(c, u))  # (cols, M)
    ey = np.exp(2j * np.pi * np.outer(c, v))  # (rows, M)
    return pulse * np.einsum("im,im->m", ey, np.asarray(image, dtype=float) @ ex)


class _NufftVis(torch.autograd.Function):
    """Image (B, N, N) float64 -> visibilities (B, M) complex128 with FINUFFT; backward is the adjoint."""

    @staticmethod
    def forward(ctx, img, op):
        ctx.op = op
        return op._nufft_forward(img)

    @staticmethod
    def backward(ctx, grad):
        return ctx.op._nufft_adjoint(grad), None


class VisibilityOperator(LinearOperator):
    """Stokes I image ``(B, 1, N, N)`` in Jy/pixel -> complex visibilities ``(B, M)`` in Jy.

    ``sigma`` (Jy, per visibility) sets the Gaussian noise model (independent on
    real and imaginary parts). ``method`` is ``'dft'`` (default) or ``'nufft'``.
    """

    def __init__(
        self,
        u: np.ndarray,
        v: np.ndarray,
        geom: ImageGeometry,
        sigma: np.ndarray | float | None = None,
        method: str = "dft",
        nufft_eps: float = 1e-9,
    ) -> None:
        noise: NoiseModel = GaussianNoise(torch.tensor(np.array(1.0 if sigma is None else sigma, dtype=float)))
        super().__init__((1, geom.npix, geom.npix), noise)
        self.geom = geom
        u = np.asarray(u, dtype=float).reshape(-1)
        v = np.asarray(v, dtype=float).reshape(-1)
        if len(u) != len(v) or len(u) == 0:
            raise InterferoError("u and v must be non-empty and of equal length")
        if not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
            raise InterferoError("u and v must be finite")
        self.n_vis = len(u)
        self.method = method
        if method == "dft":
            from ..validation import check_memory

            check_memory(48.0 * self.n_vis * geom.npix**2,
                         f"the DFT matrix of {self.n_vis} visibilities and {geom.npix}x{geom.npix} pixels")
            a = dft_matrix(u, v, geom)
            self.register_buffer("matrix", torch.from_numpy(np.concatenate([a.real, a.imag], 0)).contiguous())
        elif method == "nufft":
            try:
                import finufft  # noqa: F401
            except ImportError:
                msg = "method='nufft' needs the optional extra: pip install 'interfero[nufft]'"
                raise InterferoError(msg) from None
            p = geom.psize_rad
            # exp(2 pi i u x_j) with x_j = (-m - 1/2) p, m = j - N/2 in [-N/2, N/2)
            self._su = np.mod(-2 * np.pi * u * p + np.pi, 2 * np.pi) - np.pi
            self._sv = np.mod(-2 * np.pi * v * p + np.pi, 2 * np.pi) - np.pi
            phase = np.exp(-1j * np.pi * (u + v) * p)
            self._post = phase * triangle_pulse_ft(u, p) * triangle_pulse_ft(v, p)
            self.nufft_eps = float(nufft_eps)
        else:
            raise InterferoError(f"unknown visibility method {method!r} (use 'dft' or 'nufft')")

    # ----------------------------------------------------------------- NUFFT
    def _nufft_forward(self, img: torch.Tensor) -> torch.Tensor:
        import finufft

        f = img.detach().cpu().numpy().astype(np.complex128)
        c = finufft.nufft2d2(self._sv, self._su, f, isign=1, eps=self.nufft_eps)
        return torch.from_numpy(np.asarray(c).reshape(img.shape[0], -1) * self._post).to(img.device)

    def _nufft_adjoint(self, vis: torch.Tensor) -> torch.Tensor:
        import finufft

        n = self.geom.npix
        c = vis.detach().cpu().numpy().astype(np.complex128) * np.conj(self._post)
        f = finufft.nufft2d1(self._sv, self._su, c, (n, n), isign=-1, eps=self.nufft_eps)
        return torch.from_numpy(np.asarray(f).real.reshape(vis.shape[0], n, n)).to(vis.device)

    # -------------------------------------------------------------- contract
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image(x)
        b = x.shape[0]
        if self.method == "nufft":
            out = _NufftVis.apply(x[:, 0].to(torch.float64), self)
            return out.to(torch.complex64 if x.dtype == torch.float32 else torch.complex128)
        m = self.const("matrix", x)
        y = x.reshape(b, -1) @ m.T
        return torch.complex(y[:, : self.n_vis], y[:, self.n_vis :])

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Re(A^H y)``: the adjoint in the real inner product ``Re <y, w>``."""
        if y.ndim != 2 or y.shape[1] != self.n_vis:
            raise InterferoError(f"visibilities must have shape (B, {self.n_vis}), got {tuple(y.shape)}")
        n = self.geom.npix
        if self.method == "nufft":
            return self._nufft_adjoint(y.to(torch.complex128)).to(y.real.dtype).view(-1, 1, n, n)
        m = self.const("matrix", y)
        stacked = torch.cat([y.real, y.imag], dim=1)
        return (stacked @ m).view(-1, 1, n, n)

    def dirty_image(self, vis: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted dirty image, normalised so that the dirty beam peaks at 1."""
        w = torch.ones(self.n_vis, dtype=vis.real.dtype) if weights is None else weights.to(vis.real.dtype)
        return self.adjoint(vis * w) / w.sum()

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Natural-weighted dirty image (Jy/beam-like; for initialisation and plots)."""
        s = self.noise.sigma.to(y.real.dtype)
        w = (1.0 / s**2).expand(self.n_vis) if s.ndim else torch.full((self.n_vis,), 1.0 / float(s) ** 2)
        return self.dirty_image(y, w.to(y.real.dtype))
