"""The Laplace (Gauss-Newton) approximation that shapes a flow's correlated base.

Near an image ``x0`` a posterior is approximately Gaussian with precision ``P = P_prior + H``: ``H`` the
data's Gauss-Newton Hessian (1/Jy^2 for images in Jy/pixel; interferometric data fix a few hundred
Fourier components, spread over all pixels) and ``P_prior`` the Hessian of ``-log p`` (for a score prior
``-d score / dx`` at ``x0``: large in the empty sky, where the prior allows only its jitter, small along
the structures it expects in a source). :func:`correlated_base` turns ``P^-1`` into the directions and
starting gains of :class:`posterior.flows.CorrelatedGaussian`, so the flow starts with the posterior's
correlations and per-pixel spread and learns the rest.
"""

from __future__ import annotations

import math

import torch

from interfero.errors import InterferoError

MAX_PIXELS = 4096  # dense (D, D) float64 Hessians and their eigendecomposition: 128 MB and seconds at D = 4096
FLOOR = 1e-2  # the smallest prior precision kept, in units of 1 / prior_std^2 (P_prior is clipped to be >= this)


def _check_size(shape) -> int:
    d = math.prod(shape)
    if d > MAX_PIXELS:
        raise InterferoError(f"a Laplace base needs dense ({d}, {d}) Hessians; images of at most {MAX_PIXELS}"
                             " pixels (use --flow-base diagonal)")
    return d


def data_hessian(operator, x0: torch.Tensor) -> torch.Tensor:
    """The Gauss-Newton Hessian ``J^T W J`` (``(D, D)``, float64, 1/Jy^2 for images in Jy/pixel) of the
    operator's negative log-likelihood at one image ``x0`` (``D`` pixels in any shape): the exact Hessian of
    the likelihood of data equal to ``x0``'s own prediction, where the residual terms vanish (positive
    semi-definite; the Fisher information of the data at ``x0``; ``operator.gauss_newton_hessian``, in
    closed form for interferometric data). :func:`data_hessians` for a batch."""
    d = _check_size(tuple(operator.image_shape))
    x0 = torch.as_tensor(x0)
    if x0.numel() != d:
        raise InterferoError(f"data_hessian takes one image of {d} pixels, got {x0.numel()} values"
                             " (data_hessians for a batch)")
    return data_hessians(operator, x0)[0]


def data_hessians(operator, images: torch.Tensor) -> torch.Tensor:
    """:func:`data_hessian` at each of a batch of images ``(B, *image_shape)``: ``(B, D, D)``."""
    shape = tuple(operator.image_shape)
    _check_size(shape)
    x = torch.as_tensor(images, dtype=torch.float64).detach().reshape(-1, *shape)
    h = operator.gauss_newton_hessian(x)
    if not bool(torch.isfinite(h).all()):
        raise InterferoError("the data's Hessian at an image is not finite")
    return h


def prior_hessian(prior, x0: torch.Tensor, prior_std: float, smoothed: bool = True, chunk: int = 128) -> torch.Tensor:
    """The Hessian of ``-log p`` at ``x0`` (``(D, D)``, float64, 1/Jy^2): central differences of the prior's
    score (steps of ``prior_std / 100`` per pixel, ``chunk`` images per call), made symmetric, with its
    eigenvalues clipped to at least ``FLOOR / prior_std^2`` (every direction proper) and, for a ``smoothed``
    prior (a score prior's ``p_eps``: any law plus white noise of std ``prior_std``), at most ``1 /
    prior_std^2``, the exact bound there (``-Hess log p_eps = (I - Cov[x | x_eps] / prior_std^2) /
    prior_std^2``) that a network's score at ``eps`` overshoots."""
    shape = tuple(prior.image_shape)
    d = _check_size(shape)
    if not (math.isfinite(prior_std) and prior_std > 0):
        raise InterferoError(f"the prior's white scale must be > 0 Jy/pixel, got {prior_std}")
    dtype = next((p.dtype for p in prior.parameters()), next((b.dtype for b in prior.buffers()), torch.float64))
    x0 = torch.as_tensor(x0, dtype=dtype).reshape(1, *shape).detach()
    h = prior_std / 100
    rows = []
    with torch.no_grad():
        for i in range(0, d, chunk):
            steps = torch.zeros(min(chunk, d - i), d, dtype=dtype)
            steps[:, i:i + chunk].fill_diagonal_(h)  # pixels i, i+1, ... moved by h, one per image
            steps = steps.reshape(-1, *shape)
            diff = prior.score(x0 + steps).double() - prior.score(x0 - steps).double()
            rows.append(-diff.reshape(-1, d) / (2 * h))
    hess = torch.cat(rows)
    if not bool(torch.isfinite(hess).all()):
        raise InterferoError("the prior's Hessian at the starting image is not finite")
    lam, vecs = torch.linalg.eigh(0.5 * (hess + hess.T))
    lam = lam.clamp(FLOOR / prior_std**2, 1 / prior_std**2 if smoothed else None)
    return (vecs * lam) @ vecs.T


def laplace_precision(operator, prior, x0: torch.Tensor, prior_std: float, smoothed: bool = True) -> torch.Tensor:
    """The Laplace precision ``P_prior + H`` at ``x0`` (``(D, D)``, float64, 1/Jy^2):
    :func:`prior_hessian` (white scale ``prior_std`` Jy/pixel, ``smoothed`` as there) plus :func:`data_hessian`."""
    return prior_hessian(prior, x0, prior_std, smoothed=smoothed) + data_hessian(operator, x0)


def laplace_std(precision: torch.Tensor) -> torch.Tensor:
    """Per-pixel std ``sqrt(diag(P^-1))`` (``(D,)``, Jy/pixel) of the Gaussian of ``precision`` ``P``
    (positive definite, 1/Jy^2): the marginal spread of each pixel, every correlation counted."""
    chol, info = torch.linalg.cholesky_ex(precision.to(torch.float64))
    if int(info) != 0:
        raise InterferoError("the Laplace precision is not positive definite")
    return torch.cholesky_inverse(chol).diagonal().sqrt()


def correlated_base(precision: torch.Tensor, prior_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V, log_gain)`` of :class:`posterior.flows.CorrelatedGaussian` for the Gaussian of ``precision``
    (``(D, D)``, positive definite, 1/Jy^2) with white scale ``s = prior_std`` (Jy/pixel): ``V`` its
    eigenvectors (``(D, D)``), ``log_gain = -log(s^2 lam) / 2`` for its eigenvalues ``lam``, so that
    ``s^2 C^2 = precision^-1``."""
    if not (math.isfinite(prior_std) and prior_std > 0):
        raise InterferoError(f"the prior's white scale must be > 0 Jy/pixel, got {prior_std}")
    lam, vecs = torch.linalg.eigh(prior_std**2 * precision.to(torch.float64))
    if not bool(lam.min() > 0):
        raise InterferoError("the Laplace precision is not positive definite")
    return vecs.contiguous(), -0.5 * torch.log(lam)
