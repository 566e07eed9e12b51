"""Normalizing flows for variational posteriors (RealNVP and Glow on normflows).

A flow maps a Gaussian base ``z`` (diagonal, or :class:`CorrelatedGaussian` with a fixed
correlation across the event) through invertible layers to an event ``x`` of any shape
(images ``(C, H, W)``, vectors), and gives both ``sample(n) -> (x, log_q(x))`` and
``log_prob(x)`` (normflows' API).

Dense layout (small images, vectors): the event is flattened; each block is a
masked affine coupling whose shift and log-scale (tanh-bounded) come from MLPs
of the other half (a seeded random half, then its complement), and an ActNorm.

Conv layout (DPI style for images): the base lives in the space-to-depth ("squeezed")
shape ``(4C, H/2, W/2)``; each block is an affine coupling (a small conv net
gives shift and log-scale of one half of the channels from the other), an
ActNorm and a channel mixing (a fixed random permutation for ``"realnvp"``, a
learned invertible 1x1 convolution for ``"glow"``). The last layers undo the
squeeze, optionally map orthonormal 2-D DCT coefficients to pixels (``basis="dct"``:
the layers and the diagonal base then act on spatial frequencies, see
:class:`InverseDCT`) and apply the output transform:

- ``"softplus"``: ``x = s0 * softplus(u)`` for non-negative images (Jy/pixel),
  ``log|dx/du| = sum log(s0 * sigmoid(u))``;
- ``"exp"``: ``x = s0 * exp(u)``;
- ``"none"``: ``x = s0 * u`` for unconstrained images (e.g. the analytic checks).

All log-Jacobians are included in ``log_q``. Couplings start as the identity
(zero-initialised last layers), ActNorms start as the identity, so the initial
``q`` is the base pushed through the output transform: :func:`build_flow` puts
the base mean at a given image (a dirty image or a blob of the expected flux)
with a chosen relative spread.
"""

from __future__ import annotations

import math
import warnings

import normflows as nf
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from interfero.errors import InterferoError

KINDS = ("realnvp", "glow")
LAYOUTS = ("auto", "conv", "dense")
OUTPUTS = ("softplus", "exp", "none")
COUPLING_SCALES = ("exp", "sigmoid")
BASES = ("pixel", "dct")


class CorrelatedGaussian(nf.distributions.BaseDistribution):
    """A Gaussian base with noise correlated across the event: ``z = loc + exp(log_scale) * P(C eps)``,
    ``eps ~ N(0, I)`` over the event's ``D`` values (an image's pixels, row-major), ``C = I + V
    diag(exp(log_gain) - 1) V^T`` with ``V`` (``D x r``, orthonormal columns, ``r <= D``) fixed and the
    ``r`` gains learned, and ``P`` the rearrangement of the event's values into the latent shape that the
    flow's layers undo at initialisation (``order``: latent value ``j`` is event value ``order[j]``), so
    ``C^2`` is the correlation of the flow's output: 1 except in the directions ``V``, where it is
    ``exp(2 log_gain)``. With ``r = D`` any covariance ``s^2 C^2``: a Laplace approximation of a posterior
    (:mod:`posterior.laplace`). Interferometric data constrain Fourier components spread over all pixels; a
    diagonal base with local couplings cannot hold that, and a reverse-KL fit of one keeps per-pixel
    conditional variances, several times too small. With ``r = 0`` this is
    :class:`normflows.distributions.DiagGaussian`."""

    def __init__(self, shape, vecs: torch.Tensor, log_gain: torch.Tensor) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.d = int(np.prod(self.shape))
        vecs = torch.as_tensor(vecs, dtype=torch.get_default_dtype())
        log_gain = torch.as_tensor(log_gain, dtype=vecs.dtype).reshape(-1)
        if vecs.ndim != 2 or vecs.shape[0] != self.d or vecs.shape[1] != log_gain.numel():
            raise InterferoError(f"a correlated base over {self.d} values needs vectors ({self.d}, r) and r gains,"
                                 f" got {tuple(vecs.shape)} and {log_gain.numel()}")
        if not (torch.isfinite(vecs).all() and torch.isfinite(log_gain).all()):
            raise InterferoError("a correlated base needs finite vectors and gains")
        self.loc = nn.Parameter(torch.zeros(1, *self.shape))
        self.log_scale = nn.Parameter(torch.zeros(1, *self.shape))
        self.register_buffer("vecs", vecs.clone())
        self.log_gain = nn.Parameter(log_gain.clone())
        self.register_buffer("order", torch.arange(self.d))
        self.register_buffer("inv_order", torch.arange(self.d))

    def set_order(self, order: torch.Tensor) -> None:
        """Latent value ``j`` holds event value ``order[j]`` (a permutation of ``range(D)``)."""
        order = torch.as_tensor(order, dtype=torch.long).reshape(-1)
        if order.numel() != self.d or not torch.equal(torch.sort(order).values, torch.arange(self.d)):
            raise InterferoError(f"order must be a permutation of {self.d} values")
        self.order.copy_(order)
        self.inv_order.copy_(torch.argsort(order))

    def _correlate(self, flat: torch.Tensor, sign: float) -> torch.Tensor:
        """``C flat`` (``sign`` 1) or ``C^-1 flat`` (``sign`` -1) for flat events ``(B, D)``."""
        coef = flat @ self.vecs
        return flat + (coef * torch.expm1(sign * self.log_gain)) @ self.vecs.T

    def _log_norm(self) -> torch.Tensor:
        return -0.5 * self.d * math.log(2 * math.pi) - self.log_scale.sum() - self.log_gain.sum()

    def forward(self, num_samples=1, context=None):
        eps = torch.randn((num_samples, self.d), dtype=self.loc.dtype, device=self.loc.device)
        noise = self._correlate(eps, 1.0)[:, self.order].reshape(num_samples, *self.shape)
        return self.loc + torch.exp(self.log_scale) * noise, self._log_norm() - 0.5 * eps.pow(2).sum(-1)

    def log_prob(self, z, context=None):
        noise = ((z - self.loc) / torch.exp(self.log_scale)).reshape(z.shape[0], -1)[:, self.inv_order]
        return self._log_norm() - 0.5 * self._correlate(noise, -1.0).pow(2).sum(-1)


class SpaceToDepth(nf.flows.Flow):
    """``(B, C, H, W) -> (B, 4C, H/2, W/2)`` (a permutation: log-det 0)."""

    def forward(self, z):
        return F.pixel_unshuffle(z, 2), torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)

    def inverse(self, z):
        return F.pixel_shuffle(z, 2), torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)


class DepthToSpace(nf.flows.Flow):
    """``(B, 4C, H/2, W/2) -> (B, C, H, W)`` (a permutation: log-det 0)."""

    def forward(self, z):
        return F.pixel_shuffle(z, 2), torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)

    def inverse(self, z):
        return F.pixel_unshuffle(z, 2), torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)


def dct_matrix(n: int, dtype=torch.float64) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (n x n): ``c = D x`` are the DCT coefficients of ``x``,
    ``x = D^T c`` (scipy's ``dct(x, norm="ortho")``)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None]
    d = torch.cos(math.pi * (i + 0.5) * k / n) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype)


class InverseDCT(nf.flows.Flow):
    """Orthonormal 2-D DCT-II coefficients ``(B, C, H, W)`` to images: ``x = D_H^T c D_W`` per channel
    (an orthogonal map: log-det 0; the inverse is the forward DCT).

    With it last before the output transform, a flow's diagonal base and its layers act on spatial
    frequencies rather than pixels. Fourier-plane data (interferometry) fix some spatial frequencies and
    leave the rest to the prior, so the posterior is far closer to independent over DCT coefficients
    than over pixels: a diagonal Gaussian over pixels keeps each pixel's conditional variance, much below
    its marginal one where the data fix sums of pixels (mean-field shrinkage; on EHT 2017's exact
    Gaussian posterior the best one has 0.024 of the exact per-pixel std, over DCT coefficients 0.81:
    ``scripts/validate_flow_base.py``)."""

    def __init__(self, h: int, w: int) -> None:
        super().__init__()
        self.register_buffer("dh", dct_matrix(h), persistent=False)
        self.register_buffer("dw", dct_matrix(w), persistent=False)

    def forward(self, z):
        dh, dw = self.dh.to(z), self.dw.to(z)
        return dh.T @ z @ dw, torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)

    def inverse(self, z):
        dh, dw = self.dh.to(z), self.dw.to(z)
        return dh @ z @ dw.T, torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)


class Reshape(nf.flows.Flow):
    """Flat vectors ``(B, D)`` to events of ``shape`` (log-det 0)."""

    def __init__(self, shape) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, z):
        return z.reshape(z.shape[0], *self.shape), torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)

    def inverse(self, z):
        return z.reshape(z.shape[0], -1), torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)


class OutputTransform(nf.flows.Flow):
    """Elementwise ``x = s0 * h(u)`` with ``h`` = softplus, exp or identity; ``s0 > 0`` a fixed scale."""

    def __init__(self, kind: str = "softplus", scale: float = 1.0) -> None:
        super().__init__()
        if kind not in OUTPUTS:
            raise InterferoError(f"unknown flow output transform {kind!r} (choose from {', '.join(OUTPUTS)})")
        if not (math.isfinite(scale) and scale > 0):
            raise InterferoError(f"flow output scale must be > 0, got {scale}")
        self.kind, self.scale = kind, float(scale)

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1).sum(-1)

    def forward(self, u):
        d = u[0].numel()
        if self.kind == "softplus":
            return self.scale * F.softplus(u), self._sum(F.logsigmoid(u)) + d * math.log(self.scale)
        if self.kind == "exp":
            return self.scale * torch.exp(u), self._sum(u) + d * math.log(self.scale)
        return self.scale * u, torch.full((u.shape[0],), d * math.log(self.scale), dtype=u.dtype, device=u.device)

    def inverse(self, x):
        y = x / self.scale
        d = x[0].numel()
        if self.kind == "softplus":
            if (y <= 0).any():
                raise InterferoError("softplus flow cannot represent non-positive pixels")
            u = y + torch.log(-torch.expm1(-y))  # softplus^-1, stable for large and small y
            return u, -self._sum(F.logsigmoid(u)) - d * math.log(self.scale)
        if self.kind == "exp":
            if (y <= 0).any():
                raise InterferoError("exp flow cannot represent non-positive pixels")
            u = torch.log(y)
            return u, -self._sum(u) - d * math.log(self.scale)
        return y, torch.full((x.shape[0],), -d * math.log(self.scale), dtype=x.dtype, device=x.device)

    def to_latent(self, x: torch.Tensor) -> torch.Tensor:
        """``u = h^-1(x / s0)`` with pixels floored at a small positive value (for initialisation)."""
        y = x / self.scale
        if self.kind == "none":
            return y
        y = y.clamp_min(1e-3)
        return torch.log(y) if self.kind == "exp" else y + torch.log(-torch.expm1(-y))


def _identity_actnorm(shape) -> nf.flows.ActNorm:
    """An ActNorm that starts as the identity (its data-dependent initialisation switched off)."""
    layer = nf.flows.ActNorm(shape)
    layer.data_dep_init_done = torch.tensor(1.0)
    return layer


class Flow(nf.NormalizingFlow):
    """A normflows flow with the event shape and settings it was built with (``x_shape``, ``config``)."""

    def __init__(self, q0, flows, x_shape, config: dict) -> None:
        super().__init__(q0, flows)
        self.x_shape = tuple(x_shape)
        self.config = dict(config)

    @property
    def output(self) -> OutputTransform:
        return self.flows[-1]


def build_flow(
    shape,
    kind: str = "realnvp",
    layout: str = "auto",
    blocks: int = 16,
    hidden: int = 32,
    output: str = "softplus",
    scale: float = 1.0,
    init: torch.Tensor | None = None,
    init_spread: float = 0.1,
    seed: int = 0,
    coupling_scale: str = "exp",
    base: tuple[torch.Tensor, torch.Tensor] | None = None,
    basis: str = "pixel",
) -> Flow:
    """A RealNVP or Glow flow over images ``(C, H, W)`` (H, W even) or vectors ``(D,)``.

    Args:
        shape: event shape.
        kind: ``"realnvp"`` (random channel permutations / random masks) or ``"glow"`` (learned
            invertible 1x1 convolutions; in the dense layout a learned LU-parametrised linear map over all
            pixels after each coupling, which lets the flow represent any Gaussian exactly).
        layout: ``"conv"`` (squeezed images, conv couplings), ``"dense"`` (flattened, MLP couplings:
            every pixel can depend on every other; for small images and vectors) or ``"auto"``
            (conv for images of even size >= 4).
        blocks: number of coupling blocks.
        hidden: hidden channels (images) or units (vectors) of each coupling net.
        output: output transform (``softplus``, ``exp``, ``none``).
        scale: ``s0`` of the output transform (for images in Jy/pixel: about the mean pixel value).
        init: image the initial ``q`` is centred on (in output units); default: ``h(0)``.
        init_spread: initial standard deviation of the base, in latent units (with a correlated ``base``: of
            the output latent, the layers' initial gains undone).
        seed: seeds the permutations (the rest of the initialisation is deterministic).
        coupling_scale: scale map of the conv couplings: ``"exp"`` (RealNVP, ``exp(s)``, unbounded) or
            ``"sigmoid"`` (``sigmoid(s + 2)`` in (0, 1) towards the image, normflows' ``"sigmoid_inv"``:
            a coupling can only contract, so no sample can overflow; the ActNorms still scale freely).
            The dense layout's log-scales are tanh-bounded either way.
        base: ``None`` for a diagonal base Gaussian (independent latent pixels), or ``(V, log_gain)`` for
            a :class:`CorrelatedGaussian` (``V`` of shape ``(D, r)`` over the event's ``D`` values, ``r``
            starting log-gains): noise correlated across the image, as posteriors from Fourier-plane
            data (interferometry) need.
        basis: what the base and layers act on: ``"pixel"`` or ``"dct"`` (orthonormal 2-D DCT coefficients,
            :class:`InverseDCT` before the output transform; images ``(C, H, W)`` with a diagonal base).
    """
    shape = tuple(int(s) for s in shape)
    if kind not in KINDS:
        raise InterferoError(f"unknown flow {kind!r} (choose from {', '.join(KINDS)})")
    if blocks < 1 or hidden < 1:
        raise InterferoError("a flow needs at least one block and one hidden unit")
    if not init_spread > 0:
        raise InterferoError("initial spread of the flow must be > 0")
    if coupling_scale not in COUPLING_SCALES:
        raise InterferoError(f"unknown coupling scale {coupling_scale!r} (choose from {', '.join(COUPLING_SCALES)})")
    if basis not in BASES:
        raise InterferoError(f"unknown flow basis {basis!r} (choose from {', '.join(BASES)})")
    if basis == "dct" and (len(shape) != 3 or base is not None):
        raise InterferoError("a DCT-basis flow is for images (C, H, W) with a diagonal base")
    config = {"shape": list(shape), "kind": kind, "blocks": blocks, "hidden": hidden, "output": output,
              "scale": float(scale), "init_spread": float(init_spread), "seed": seed,
              "coupling_scale": coupling_scale}
    if base is not None:  # the key is absent for the diagonal base, as in flows saved before it existed
        config["base_rank"] = int(torch.as_tensor(base[0]).shape[-1])
    if basis != "pixel":  # likewise absent for pixel flows
        config["basis"] = basis
    with torch.random.fork_rng(), warnings.catch_warnings():  # every random choice comes from ``seed``
        warnings.filterwarnings("ignore", message=".*torch.lu is deprecated.*")
        torch.manual_seed(seed)
        return _build(shape, kind, layout, blocks, hidden, output, scale, init, init_spread, seed, config, base)


def _build(shape, kind, layout, blocks, hidden, output, scale, init, init_spread, seed, config, base) -> Flow:
    out = OutputTransform(output, scale)
    g = torch.Generator().manual_seed(seed)
    layers: list[nf.flows.Flow] = []
    if layout not in LAYOUTS:
        raise InterferoError(f"unknown flow layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    if layout == "auto":
        layout = "conv" if len(shape) == 3 and shape[1] % 2 == 0 and shape[2] % 2 == 0 and shape[1] >= 4 else "dense"
    config["layout"] = layout
    if layout == "conv":
        if len(shape) != 3:
            raise InterferoError(f"conv flows are for images (C, H, W), got shape {shape}")
        c, h, w = shape
        if h % 2 or w % 2:
            raise InterferoError(f"image flows need even image sizes, got {h}x{w}")
        latent = (4 * c, h // 2, w // 2)
        ch = latent[0]
        half = ch // 2
        scale_map = "exp" if config["coupling_scale"] == "exp" else "sigmoid_inv"  # normflows' names
        for _ in range(blocks):
            net = nf.nets.ConvNet2d([half, hidden, hidden, 2 * (ch - half)], [3, 1, 3], init_zeros=True)
            layers.append(nf.flows.AffineCouplingBlock(net, scale=True, scale_map=scale_map, split_mode="channel"))
            layers.append(_identity_actnorm((ch, 1, 1)))
            if kind == "glow":
                layers.append(nf.flows.Invertible1x1Conv(ch, use_lu=True))
            else:
                perm = nf.flows.Permute(ch, mode="shuffle")
                order = torch.randperm(ch, generator=g)
                perm.perm.copy_(order)
                perm.inv_perm.copy_(torch.argsort(order))
                layers.append(perm)
        layers.append(DepthToSpace())
    else:
        d = int(np.prod(shape))
        if d < 2:
            raise InterferoError("a flow needs at least 2 dimensions")
        latent = (d,)
        for i in range(blocks):
            # alternate the two halves of a seeded random split, so every pair of pixels can interact
            if i % 2 == 0:
                b = torch.zeros(d)
                b[torch.randperm(d, generator=g)[: d // 2]] = 1.0
            else:
                b = 1.0 - b
            s = nf.nets.MLP([d, hidden, hidden, d], init_zeros=True, output_fn="tanh")
            t = nf.nets.MLP([d, hidden, hidden, d], init_zeros=True)
            layers.append(nf.flows.MaskedAffineFlow(b, t, s))
            layers.append(_identity_actnorm((d,)))
            if kind == "glow":
                layers.append(nf.flows.LULinearPermute(d, identity_init=True))
        layers.append(Reshape(shape))
    if config.get("basis") == "dct":
        layers.append(InverseDCT(shape[1], shape[2]))
    layers.append(out)
    if base is not None:
        if kind == "glow" and layout == "conv":
            raise InterferoError("a correlated flow base needs layers that start as a permutation: a realnvp flow or"
                                 " the dense layout (a conv glow starts with random 1x1 convolutions)")
        q0 = CorrelatedGaussian(latent, base[0], base[1])
    else:
        q0 = nf.distributions.DiagGaussian(latent, trainable=True)
    def to_base(u: torch.Tensor) -> torch.Tensor:
        for layer in reversed(layers[:-1]):  # all but the output start as fixed linear maps (the DCT is one)
            u, _ = layer.inverse(u)
        return u.reshape(q0.loc.shape)

    with torch.no_grad():
        dtype = q0.loc.dtype
        q0.log_scale.fill_(math.log(init_spread))
        if isinstance(q0, CorrelatedGaussian):
            # at initialisation the layers are linear maps without shifts: a permutation times fixed gains (a
            # sigmoid coupling's sigmoid(2) contracts), which the base's scale and order undo, so the output
            # latent starts with spread ``init_spread`` times the correlation C
            gain = to_base(torch.ones(1, *shape, dtype=dtype)) - to_base(torch.zeros(1, *shape, dtype=dtype))
            q0.log_scale.add_(torch.log(gain.abs()))
            index = torch.arange(math.prod(shape), dtype=dtype).reshape(1, *shape)
            q0.set_order(torch.round(to_base(index) / gain).reshape(-1))
        if init is not None:
            init = torch.as_tensor(init, dtype=dtype).reshape(1, *shape)
            q0.loc.copy_(to_base(out.to_latent(init)))
    return Flow(q0, nn.ModuleList(layers), shape, config)
