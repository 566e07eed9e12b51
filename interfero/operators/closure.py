"""The interferometric forward model: image -> visibilities -> data products.

:class:`InterferometryOperator` maps Stokes I images ``(B, 1, N, N)`` in
Jy/pixel to a :class:`VLBIData` holding the data products asked for:
complex visibilities ``vis`` (Jy), amplitudes ``amp`` (Jy), closure phases
``cphase`` (radians) and log closure amplitudes ``logcamp``, on the minimal
closure sets of the observation (ehtim's ``count='min'``).

Its noise model, :class:`VLBILikelihood`, holds the per-product sigmas of the
observation (thermal, propagated as ehtim does) and weights. Per product:

- ``vis``: complex Gaussian, ``-1/2 sum |r|^2 / sigma^2 - sum log(2 pi sigma^2)``;
- ``amp`` and ``logcamp``: Gaussian, ``-1/2 sum r^2 / sigma^2 - sum log(sqrt(2 pi) sigma)``;
- ``cphase``: ``-sum (1 - cos r) / sigma^2 - sum log(sqrt(2 pi) sigma)``, the
  wrapped form that equals the Gaussian for small residuals.

Reduced chi^2 (:meth:`InterferometryOperator.chi2`) follows ehtim's
definitions: ``vis`` ``sum |r|^2/sigma^2 / (2M)``, ``amp`` and ``logcamp``
``sum r^2/sigma^2 / M``, ``cphase`` ``2/M sum (1 - cos r)/sigma^2``.
An optional total-flux term ``-1/2 ((sum x - F) / sigma_F)^2`` ties the image
flux to ``F`` Jy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ..closures import closure_phase, data_products, log_closure_amplitude
from ..errors import InterferoError
from ..io import ImageGeometry
from ..observation import Observation
from .base import NoiseModel, Operator
from .visibility import VisibilityOperator

PRODUCTS = ("vis", "amp", "cphase", "logcamp")


@dataclass
class VLBIData:
    """Interferometric measurements, one field per data product (``None`` if absent).

    Fields have shape ``(B, M_product)``; ``vis`` is complex.
    """

    vis: torch.Tensor | None = None
    amp: torch.Tensor | None = None
    cphase: torch.Tensor | None = None
    logcamp: torch.Tensor | None = None

    def products(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not None)

    def __getitem__(self, name: str) -> torch.Tensor:
        value = getattr(self, name, None)
        if value is None:
            raise InterferoError(f"measurements have no {name!r} product (have: {', '.join(self.products())})")
        return value

    def map(self, fn) -> VLBIData:
        return VLBIData(**{k: fn(getattr(self, k)) for k in self.products()})


def _residual_terms(name: str, pred: torch.Tensor, obs: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-measurement chi^2-like terms ``t`` with ``log L = -t/2 - log-normaliser``."""
    if name == "vis":
        r = (pred - obs) / sigma
        return r.real**2 + r.imag**2
    if name == "cphase":
        return 2.0 * (1.0 - torch.cos(pred - obs)) / sigma**2
    return ((pred - obs) / sigma) ** 2


class VLBILikelihood(NoiseModel):
    """Thermal-noise likelihood of interferometric data products (see module docstring)."""

    def __init__(self, sigmas: dict[str, torch.Tensor], weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.products = tuple(sigmas)
        weights = dict(weights or {})
        unknown = set(weights) - set(self.products)
        if unknown:
            raise InterferoError(f"weights given for products not in use: {', '.join(sorted(unknown))}")
        self.weights = {k: float(weights.get(k, 1.0)) for k in self.products}
        for k, s in sigmas.items():
            s = torch.as_tensor(s, dtype=torch.float64)
            if not torch.all(torch.isfinite(s)) or torch.any(s <= 0):
                raise InterferoError(f"{k} sigmas must be finite and > 0 (got NaN, zero or negative values)")
            self.register_buffer(f"sigma_{k}", s)

    def sigma(self, name: str, like: torch.Tensor) -> torch.Tensor:
        s = getattr(self, f"sigma_{name}")
        return s.to(device=like.device, dtype=like.real.dtype)

    def sample(self, y: VLBIData, generator: torch.Generator | None = None) -> VLBIData:
        """Independent Gaussian noise on each product (for closure products prefer
        :meth:`InterferometryOperator.sample`, which adds noise to visibilities)."""
        out = {}
        for k in self.products:
            val = y[k]
            s = self.sigma(k, val)
            if val.is_complex():
                noise = torch.complex(
                    torch.randn(val.shape, generator=generator, dtype=s.dtype),
                    torch.randn(val.shape, generator=generator, dtype=s.dtype),
                )
            else:
                noise = torch.randn(val.shape, generator=generator, dtype=s.dtype)
            out[k] = val + s * noise
        return VLBIData(**out)

    def terms(self, y_pred: VLBIData, y_obs: VLBIData) -> dict[str, torch.Tensor]:
        """Per-product ``(B, M)`` chi^2 terms."""
        out = {}
        for k in self.products:
            pred = y_pred[k]
            obs = y_obs[k].to(device=pred.device, dtype=pred.dtype)
            out[k] = _residual_terms(k, pred, obs, self.sigma(k, pred))
        return out

    def log_likelihood(self, y_pred: VLBIData, y_obs: VLBIData) -> torch.Tensor:
        total = 0.0
        for k, t in self.terms(y_pred, y_obs).items():
            s = self.sigma(k, t)
            ncomp = 2 if k == "vis" else 1
            lognorm = ncomp * (torch.log(s).sum() + 0.5 * s.numel() * math.log(2 * math.pi))
            total = total + self.weights[k] * (-0.5 * t.sum(-1) - lognorm)
        return total

    def deviance_terms(self, y_pred: VLBIData, y_obs: VLBIData) -> torch.Tensor:
        """The chi^2 terms of every product side by side, ``(B, M)`` (weights applied)."""
        return torch.cat([self.weights[k] * t for k, t in self.terms(y_pred, y_obs).items()], dim=-1)

    def chi2(self, y_pred: VLBIData, y_obs: VLBIData) -> dict[str, torch.Tensor]:
        """Reduced chi^2 per product as ehtim defines it, each ``(B,)``."""
        out = {}
        for k, t in self.terms(y_pred, y_obs).items():
            out[k] = t.sum(-1) / (2 * t.shape[-1] if k == "vis" else t.shape[-1])
        return out


class InterferometryOperator(Operator):
    """Image -> interferometric data products for one :class:`Observation`.

    Args:
        obs: the observation (its uv points, sigmas and closure sets are used;
            its measured values become :attr:`data`).
        geom: image grid (``npix`` pixels over ``fov_uas`` microarcseconds).
        products: data products to model, from ``vis, amp, cphase, logcamp``.
        weights: multiplier of each product's log-likelihood (default 1).
        total_flux: if given, adds a Gaussian total-flux term (Jy).
        flux_sigma: standard deviation of that term (Jy); default 1% of the flux.
        method: ``'dft'`` or ``'nufft'`` for the visibilities.
        debias: debias amplitudes and log closure amplitudes of the data.
    """

    def __init__(
        self,
        obs: Observation,
        geom: ImageGeometry,
        products=("cphase", "logcamp"),
        weights: dict[str, float] | None = None,
        total_flux: float | None = None,
        flux_sigma: float | None = None,
        method: str = "dft",
        debias: bool = True,
    ) -> None:
        products = tuple(products)
        if not products:
            raise InterferoError("no data products asked for")
        bad = [p for p in products if p not in PRODUCTS]
        if bad:
            raise InterferoError(f"unknown data product(s) {', '.join(bad)} (use {', '.join(PRODUCTS)})")
        if len(set(products)) != len(products):
            raise InterferoError(f"data products {','.join(products)} name one twice (each enters the likelihood"
                                 " once)")
        self.products = products
        vis = torch.tensor(obs.vis)
        sigma = torch.tensor(obs.sigma)
        measured = data_products(vis, sigma, obs.closures, products, debias)
        super().__init__((1, geom.npix, geom.npix), VLBILikelihood({k: measured[k][1] for k in products}, weights))
        self.obs = obs
        self.geom = geom
        self.debias = debias
        self.vis_op = VisibilityOperator(obs.u, obs.v, geom, sigma=obs.sigma, method=method)
        c = obs.closures
        self.register_buffer("tri_rows", torch.as_tensor(c.tri_rows))
        self.register_buffer("tri_sign", torch.as_tensor(c.tri_sign, dtype=torch.float64))
        self.register_buffer("quad_rows", torch.as_tensor(c.quad_rows))
        self.data = VLBIData(**{k: measured[k][0][None] for k in products})
        if total_flux is not None:
            if not (math.isfinite(total_flux) and total_flux > 0):
                raise InterferoError(f"total flux must be > 0 Jy, got {total_flux}")
            flux_sigma = 0.01 * total_flux if flux_sigma is None else flux_sigma
            if not (math.isfinite(flux_sigma) and flux_sigma > 0):
                raise InterferoError("total-flux sigma must be > 0 Jy")
        self.total_flux = total_flux
        self.flux_sigma = flux_sigma

    def _apply(self, fn, recurse: bool = True):
        """``to(device)``, ``cuda()`` and ``cpu()`` move the measured :attr:`data` with the buffers (so a fit on
        a GPU reads its data there once, not at every step); dtype casts leave it as measured."""
        super()._apply(fn, recurse)
        device = self.tri_rows.device
        self.data = self.data.map(lambda t: t.to(device))
        return self

    @property
    def sigmas(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self.noise, f"sigma_{k}") for k in self.products}

    def visibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Model visibilities ``(B, M)`` in Jy."""
        return self.vis_op(x)

    def products_from_vis(self, vis: torch.Tensor) -> VLBIData:
        """Noiseless data products of model visibilities."""
        out = {}
        for k in self.products:
            if k == "vis":
                out[k] = vis
            elif k == "amp":
                out[k] = _abs(vis)
            elif k == "cphase":
                out[k] = closure_phase(vis, self.const("tri_rows", vis), self.const("tri_sign", vis))
            else:
                out[k] = log_closure_amplitude(_abs(vis), self.const("quad_rows", vis))
        return VLBIData(**out)

    def forward(self, x: torch.Tensor) -> VLBIData:
        self.check_image(x)
        return self.products_from_vis(self.visibilities(x))

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> VLBIData:
        """Data products of ``x`` observed with thermal noise on the visibilities
        (debiased as real data are)."""
        vis = self.vis_op.noise.sample(self.visibilities(x), generator)
        sigma = self.vis_op.noise._sigma(vis)
        measured = data_products(vis, sigma, self.obs.closures, self.products, self.debias)
        return VLBIData(**{k: measured[k][0] for k in self.products})

    def flux_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        if self.total_flux is None:
            return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        r = (x.sum(dim=(1, 2, 3)) - self.total_flux) / self.flux_sigma
        return -0.5 * r**2 - math.log(math.sqrt(2 * math.pi) * self.flux_sigma)

    def log_likelihood(self, x: torch.Tensor, y: VLBIData | None = None) -> torch.Tensor:
        """``log p(y | x)`` per image (``y`` defaults to the observation's data)."""
        y = self.data if y is None else y
        return self.noise.log_likelihood(self(x), y) + self.flux_log_likelihood(x)

    def saturated_log_likelihood(self, y: VLBIData | None = None) -> float:
        """The products' largest log-likelihood plus the total-flux term's peak."""
        y = self.data if y is None else y
        flux = 0.0 if self.total_flux is None else -math.log(math.sqrt(2 * math.pi) * self.flux_sigma)
        return super().saturated_log_likelihood(y) + flux

    def chi2(self, x: torch.Tensor, y: VLBIData | None = None) -> dict[str, torch.Tensor]:
        """Reduced chi^2 per product (ehtim's definitions), each ``(B,)``."""
        y = self.data if y is None else y
        return self.noise.chi2(self(x), y)

    def whitened_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """The Jacobian of the data products at each image, every row divided by its sigma and times the square
        root of its product's weight (``(B, M, D)``, float64, per Jy/pixel; ``M`` the measurements in the order
        of ``products``, a visibility giving a real and an imaginary row; the total-flux term is not included).
        In closed form from the DFT matrix ``A``: ``d log V / dx = A / V``, whose real part is the gradient of
        ``log |V|`` and imaginary part that of ``arg V``, summed over each closure's baselines with its signs
        (``method='dft'`` only)."""
        self.check_image(x)
        if self.vis_op.method != "dft":
            raise InterferoError("a closed-form Jacobian needs the DFT matrix (method='dft')")
        return self._whitened_jacobian(x)

    def _whitened_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`whitened_jacobian` of images already checked."""
        x = x.detach().to(torch.float64)
        n = self.vis_op.n_vis
        m = self.vis_op.const("matrix", x)
        a = torch.complex(m[:n], m[n:])  # (n_vis, D)
        with torch.no_grad():
            vis = self.visibilities(x)  # (B, n_vis)
        glog = a[None] / vis[:, :, None]  # d log V / dx, (B, n_vis, D)
        blocks = []
        for k in self.products:
            scale = (math.sqrt(self.noise.weights[k]) / self.noise.sigma(k, x))[None, :, None]
            if k == "vis":
                rows = torch.cat([a.real * scale[0], a.imag * scale[0]])[None].expand(x.shape[0], -1, -1)
            elif k == "amp":
                rows = (vis.abs()[:, :, None] * glog.real) * scale
            elif k == "cphase":
                sign = self.const("tri_sign", x)[None, :, :, None]
                rows = (glog.imag[:, self.tri_rows] * sign).sum(2) * scale
            else:
                q = glog.real[:, self.quad_rows]
                rows = (q[:, :, 0] + q[:, :, 1] - q[:, :, 2] - q[:, :, 3]) * scale
            blocks.append(rows)
        return torch.cat(blocks, dim=1)

    def gauss_newton_hessian(self, x: torch.Tensor, chunk: int = 4) -> torch.Tensor:
        """``J^T J`` of :meth:`whitened_jacobian` plus the total-flux term's ``1 1^T / sigma_F^2`` (``(B, D, D)``,
        float64, 1/Jy^2), ``chunk`` images at a time; the generic automatic-differentiation form for
        ``method='nufft'``. The likelihood's curvature at zero residual is ``1 / sigma^2`` per measurement for
        every product (closure phases' ``2 (1 - cos r) / sigma^2`` included)."""
        if self.vis_op.method != "dft":
            return super().gauss_newton_hessian(x)
        self.check_image(x)
        out = []
        for i in range(0, x.shape[0], chunk):
            jac = self._whitened_jacobian(x[i:i + chunk])
            out.append(jac.mT @ jac)
        h = torch.cat(out)
        if self.total_flux is not None:
            h = h + 1.0 / self.flux_sigma**2
        return h

    def pseudo_inverse(self, y: VLBIData | None = None) -> torch.Tensor:
        """Natural-weighted dirty image from ``y.vis``, or from the observation's visibilities."""
        if y is not None and y.vis is not None:
            return self.vis_op.pseudo_inverse(y.vis)
        batch = y[y.products()[0]].shape[0] if y is not None else 1
        dirty = self.vis_op.pseudo_inverse(torch.tensor(self.obs.vis)[None])
        return dirty.expand(batch, -1, -1, -1).clone()


def _abs(vis: torch.Tensor) -> torch.Tensor:
    """``|V|`` with a finite gradient at ``V = 0``."""
    tiny = torch.finfo(vis.real.dtype).tiny
    return torch.sqrt(vis.real**2 + vis.imag**2 + tiny)
