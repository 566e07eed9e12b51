"""Generic property tests run over a factory of every operator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interfero.errors import InterferoError
from interfero.io import ImageGeometry
from interfero.operators import (
    Denoising,
    GaussianBlur,
    GaussianNoise,
    InterferometryOperator,
    LinearOperator,
    LowFrequencyDFT,
    MatrixOperator,
    PoissonNoise,
    VisibilityOperator,
    VLBIData,
    box_inpainting,
    random_inpainting,
)

SHAPE = (2, 8, 8)


def _make(name: str, small_obs):
    geom = ImageGeometry(16, 160.0)
    if name == "denoise":
        return Denoising(SHAPE, GaussianNoise(0.3))
    if name == "denoise_poisson":
        return Denoising(SHAPE, PoissonNoise(gain=20.0))
    if name == "blur":
        return GaussianBlur(SHAPE, sigma_px=1.3, noise=GaussianNoise(0.1))
    if name == "lowfreq":
        return LowFrequencyDFT(SHAPE, n=3, noise=GaussianNoise(1.0))
    if name == "matrix":
        a = torch.randn(5, math.prod(SHAPE), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        return MatrixOperator(SHAPE, a, GaussianNoise(0.2))
    if name == "box_inpaint":
        return box_inpainting(SHAPE, (2, 3, 3, 4), GaussianNoise(0.05))
    if name == "random_inpaint":
        return random_inpainting(SHAPE, 0.4, seed=3, noise=GaussianNoise(0.05))
    if name == "vis_dft":
        return VisibilityOperator(small_obs.u, small_obs.v, geom, sigma=small_obs.sigma)
    if name == "vis_nufft":
        pytest.importorskip("finufft")
        return VisibilityOperator(
            small_obs.u, small_obs.v, geom, sigma=small_obs.sigma, method="nufft", nufft_eps=1e-12
        )
    if name == "vlbi_all":
        return InterferometryOperator(small_obs, geom, products=("vis", "amp", "cphase", "logcamp"), total_flux=1.5)
    if name == "vlbi_closure":
        return InterferometryOperator(small_obs, geom, products=("cphase", "logcamp"), weights={"cphase": 2.0})
    raise KeyError(name)


ALL = ["denoise", "denoise_poisson", "blur", "lowfreq", "matrix", "box_inpaint", "random_inpaint", "vis_dft",
       "vis_nufft", "vlbi_all", "vlbi_closure"]


@pytest.fixture(params=ALL)
def op(request, small_obs):
    return _make(request.param, small_obs)


def _image(op, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *op.image_shape), generator=g, dtype=torch.float64) + 0.2


def _inner(a, b):
    if isinstance(a, VLBIData):
        return sum(_inner(a[k], b[k]) for k in a.products())
    if a.is_complex():
        return (a.conj() * b).real.sum()
    return (a * b).sum()


def test_adjointness(op):
    if not isinstance(op, LinearOperator):
        pytest.skip("nonlinear operator")
    x = _image(op)
    y = op(x)
    g = torch.Generator().manual_seed(1)
    if y.is_complex():
        w = torch.complex(torch.randn(y.shape, generator=g, dtype=torch.float64),
                          torch.randn(y.shape, generator=g, dtype=torch.float64))
    else:
        w = torch.randn(y.shape, generator=g, dtype=torch.float64)
    lhs = _inner(y, w)
    rhs = _inner(x, op.adjoint(w))
    assert abs(lhs - rhs) / max(abs(lhs), abs(rhs)) < 1e-5


def test_log_likelihood_gradient_matches_finite_differences(op):
    x = _image(op, batch=2)
    y = op.sample(x.detach() * 1.1, torch.Generator().manual_seed(5))
    xg = x.clone().requires_grad_(True)
    ll = op.log_likelihood(xg, y)
    assert ll.shape == (2,) and torch.all(torch.isfinite(ll))
    (grad,) = torch.autograd.grad(ll.sum(), xg)
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        d = torch.randn(x.shape, generator=g, dtype=torch.float64)
        h = 1e-6 * x.abs().mean()
        with torch.no_grad():
            fd = (op.log_likelihood(x + h * d, y) - op.log_likelihood(x - h * d, y)).sum() / (2 * h)
        an = (grad * d).sum()
        assert abs(fd - an) / max(abs(an), 1e-8) < 1e-4, (float(fd), float(an))


def test_batch_consistency(op):
    x = _image(op, batch=3)
    y_all = op(x)
    for i in range(3):
        yi = op(x[i : i + 1])
        if isinstance(y_all, VLBIData):
            for k in y_all.products():
                assert torch.allclose(y_all[k][i : i + 1], yi[k], rtol=1e-10, atol=1e-12)
        else:
            assert torch.allclose(y_all[i : i + 1], yi, rtol=1e-10, atol=1e-12)
    y = op.sample(x, torch.Generator().manual_seed(2))
    ll = op.log_likelihood(x, y)
    for i in range(3):
        yi = y.map(lambda t, i=i: t[i : i + 1]) if isinstance(y, VLBIData) else y[i : i + 1]
        assert torch.allclose(ll[i], op.log_likelihood(x[i : i + 1], yi)[0], rtol=1e-10)


def test_float32_forward_close_to_float64(op):
    x = _image(op)
    y64 = op(x)
    y32 = op(x.float())
    pairs = [(y64[k], y32[k]) for k in y64.products()] if isinstance(y64, VLBIData) else [(y64, y32)]
    for a, b in pairs:
        assert b.dtype in (torch.float32, torch.complex64)
        assert (torch.abs(a - b.to(a.dtype)).max() / torch.abs(a).max()).item() < 1e-4


def test_pseudo_inverse_shape(op):
    x = _image(op, batch=2)
    y = op(x)
    xi = op.pseudo_inverse(y)
    assert xi.shape == x.shape and torch.all(torch.isfinite(xi))


@pytest.mark.parametrize("bad", [(3, 2, 8, 8, 1), (3, 1, 8, 9), (3, 8, 8)])
def test_wrong_shape_is_a_clear_error(op, bad):
    c, h, w = op.image_shape
    shape = {(3, 2, 8, 8, 1): (3, c, h, w, 1), (3, 1, 8, 9): (3, c, h, w + 1), (3, 8, 8): (3, h, w)}[bad]
    with pytest.raises(InterferoError, match="shape"):
        op(torch.zeros(shape, dtype=torch.float64))


def test_denoising_gaussian_log_likelihood_closed_form():
    op = Denoising((1, 2, 2), GaussianNoise(0.5))
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    y = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    expected = 4 * (-0.5 * 1.0 - np.log(0.5) - 0.5 * np.log(2 * np.pi))
    assert abs(float(op.log_likelihood(x, y)[0]) - expected) < 1e-12


def test_lowfreq_keeps_exactly_lowest_frequencies():
    op = LowFrequencyDFT((1, 16, 16), n=4)
    k = torch.arange(16, dtype=torch.float64)
    # a pure cosine at frequency 1 is kept, one at frequency 5 is not
    low = torch.cos(2 * np.pi * k / 16)[None, None, None, :].expand(1, 1, 16, 16)
    high = torch.cos(2 * np.pi * 5 * k / 16)[None, None, None, :].expand(1, 1, 16, 16)
    assert torch.allclose(op.pseudo_inverse(op(low)), low, atol=1e-12)
    assert torch.abs(op(high)).max() < 1e-12


def test_blur_pseudo_inverse_recovers_smooth_image():
    op = GaussianBlur((1, 16, 16), sigma_px=1.0, eps=1e-8)
    x = torch.tensor(np.outer(np.hanning(16), np.hanning(16)))[None, None]
    assert torch.allclose(op.pseudo_inverse(op(x)), x, atol=1e-4)


def test_operator_errors():
    with pytest.raises(InterferoError):
        GaussianBlur((1, 8, 8), sigma_px=0.0)
    with pytest.raises(InterferoError):
        LowFrequencyDFT((1, 8, 8), n=9)
    with pytest.raises(InterferoError):
        box_inpainting((1, 8, 8), (6, 6, 4, 4))
    with pytest.raises(InterferoError, match="sigma"):
        GaussianNoise(torch.tensor([1.0, 0.0]))
    with pytest.raises(InterferoError, match="sigma"):
        GaussianNoise(float("nan"))
