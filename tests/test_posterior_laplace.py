"""The Laplace base: the data's Gauss-Newton Hessian against closed forms and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interfero.errors import InterferoError
from interfero.io import ImageGeometry
from interfero.models import render
from interfero.operators.base import GaussianNoise, Operator
from interfero.operators.closure import InterferometryOperator
from interfero.operators.image import MatrixOperator
from posterior.laplace import (
    correlated_base,
    data_hessian,
    data_hessians,
    laplace_precision,
    laplace_std,
    prior_hessian,
)
from priors.classical import GaussianPrior, TVPrior


def test_hessian_of_a_linear_gaussian_operator_is_a_t_w_a():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 9))
    sigma = rng.uniform(0.5, 2.0, 20)
    op = MatrixOperator((1, 3, 3), a, GaussianNoise(torch.tensor(sigma)))
    h = data_hessian(op, torch.rand(1, 3, 3, dtype=torch.float64))
    assert np.allclose(h.numpy(), a.T @ (a / sigma[:, None] ** 2), rtol=1e-10, atol=1e-10)


def test_closure_hessian_is_j_t_w_j_from_finite_differences(small_obs):
    """Closure phases, log closure amplitudes and the flux term: ``sum_k J_k^T W_k J_k`` with ``J`` from central
    differences of the data products and ``W`` their inverse variances (the flux term's ``1 1^T / sigma^2``)."""
    geom = ImageGeometry(16, 160.0)
    x0 = torch.tensor(render("crescent", geom, flux=1.5) + 1e-3, dtype=torch.float64).reshape(1, 1, 16, 16)
    op = InterferometryOperator(small_obs, geom, products=("cphase", "logcamp"), total_flux=1.5, flux_sigma=0.03)
    h = data_hessian(op, x0).numpy()
    d, eps = 256, 1e-6
    steps = eps * torch.eye(d, dtype=torch.float64).reshape(d, 1, 16, 16)
    with torch.no_grad():
        up, down = op(x0 + steps), op(x0 - steps)
    ref = np.full((d, d), 1.0 / 0.03**2)
    for k in ("cphase", "logcamp"):
        diff = up[k] - down[k]
        if k == "cphase":
            diff = torch.remainder(diff + np.pi, 2 * np.pi) - np.pi
        jac = (diff / (2 * eps)).numpy()  # (d, M): column m is the gradient of product m
        w = op.noise.weights[k] / op.noise.sigma(k, up[k]).numpy() ** 2
        ref += (jac * w) @ jac.T
    assert np.allclose(h, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert np.linalg.eigvalsh(h).min() > -1e-6 * np.abs(h).max()  # Gauss-Newton: positive semi-definite


def test_closed_form_hessian_matches_automatic_differentiation(small_obs):
    """Every data product, product weights and the flux term, on a batch: the interferometric operator's
    closed-form ``J^T J`` against the generic Hessian by automatic differentiation of its own likelihood."""
    geom = ImageGeometry(16, 160.0)
    rng = np.random.default_rng(3)
    x = torch.tensor(render("crescent", geom, flux=1.5)[None, None] * rng.uniform(0.5, 1.5, (3, 1, 16, 16)))
    op = InterferometryOperator(small_obs, geom, products=("vis", "amp", "cphase", "logcamp"),
                                weights={"vis": 0.5, "amp": 2.0, "cphase": 1.5, "logcamp": 0.7}, total_flux=1.5)
    h = data_hessians(op, x)
    ref = Operator.gauss_newton_hessian(op, x)
    assert h.shape == (3, 256, 256)
    assert torch.allclose(h, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))
    assert torch.allclose(data_hessian(op, x[1]), ref[1], rtol=1e-9, atol=1e-9 * float(ref.abs().max()))
    assert data_hessians(op, x[:1]).shape == (1, 256, 256)  # a batch of one stays a batch
    with pytest.raises(InterferoError, match="one image of 256 pixels"):
        data_hessian(op, x)
    jac = op.whitened_jacobian(x[:1])
    assert jac.shape == (1, 2 * op.vis_op.n_vis + op.vis_op.n_vis + op.tri_rows.shape[0] + op.quad_rows.shape[0],
                         256)


def test_prior_hessian_of_a_gaussian_prior_is_its_precision():
    """Closed form: ``-Hess log N(m, S) = S^-1``; for a ``smoothed`` prior (``p_eps``) its eigenvalues are cut
    at ``1 / prior_std^2``."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((16, 16))
    cov = torch.tensor(a @ a.T / 16 + 0.5 * np.eye(16))
    prior = GaussianPrior(torch.zeros(1, 4, 4), cov)
    x0 = torch.tensor(rng.standard_normal((1, 4, 4)))
    h = prior_hessian(prior, x0, prior_std=10.0, smoothed=False)  # floor 1e-4: below every eigenvalue
    assert torch.allclose(h, torch.linalg.inv(cov), rtol=1e-6, atol=1e-6)
    lam = torch.linalg.eigvalsh(torch.linalg.inv(cov))
    cut = torch.linalg.eigvalsh(prior_hessian(prior, x0, prior_std=float(lam[8] ** -0.5)))
    assert torch.allclose(cut, torch.cat([lam[:8], lam[8].expand(8)]), rtol=1e-6)


def test_correlated_base_gives_the_laplace_covariance():
    rng = np.random.default_rng(1)
    j = rng.standard_normal((6, 30)) * 50
    s = 0.1
    precision = torch.tensor(j.T @ j) + torch.eye(30, dtype=torch.float64) / s**2
    vecs, log_gain = correlated_base(precision, s)
    assert vecs.shape == (30, 30)
    c = torch.eye(30, dtype=torch.float64) + vecs @ torch.diag(torch.expm1(log_gain)) @ vecs.T
    assert torch.allclose(s**2 * c @ c, torch.linalg.inv(precision), atol=1e-12)
    # with a white prior only the six directions the data measure differ from the prior's scale
    assert int((log_gain.abs() > 1e-9).sum()) == 6


def test_laplace_std_of_a_linear_gaussian_model_is_the_exact_posterior_std():
    """Closed form: data ``y = A x + n`` (``n ~ N(0, diag(sigma^2))``) and prior ``N(m, S)`` give the posterior
    covariance ``(A^T W A + S^-1)^-1``; its diagonal's square root at any ``x0``."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((12, 16))
    sigma = rng.uniform(0.5, 2.0, 12)
    b = rng.standard_normal((16, 16))
    cov = b @ b.T / 16 + 0.5 * np.eye(16)
    op = MatrixOperator((1, 4, 4), a, GaussianNoise(torch.tensor(sigma)))
    prior = GaussianPrior(torch.zeros(1, 4, 4), torch.tensor(cov))
    x0 = torch.tensor(rng.standard_normal((1, 4, 4)))
    std = laplace_std(laplace_precision(op, prior, x0, prior_std=10.0, smoothed=False))
    exact = np.sqrt(np.diag(np.linalg.inv(a.T @ (a / sigma[:, None] ** 2) + np.linalg.inv(cov))))
    assert np.allclose(std.numpy(), exact, rtol=1e-6)
    assert (std.numpy() < np.sqrt(np.diag(cov))).all()  # data only narrow a Gaussian posterior
    with pytest.raises(InterferoError, match="not positive definite"):
        laplace_std(-torch.eye(3, dtype=torch.float64))


def test_laplace_refusals():
    with pytest.raises(InterferoError, match="white scale"):
        correlated_base(torch.eye(3), 0.0)
    with pytest.raises(InterferoError, match="not positive definite"):
        correlated_base(-torch.eye(3), 1.0)
    op = MatrixOperator((1, 80, 80), np.ones((1, 6400)))
    with pytest.raises(InterferoError, match="at most 4096 pixels"):
        data_hessian(op, torch.zeros(1, 80, 80))
    with pytest.raises(InterferoError, match="at most 4096 pixels"):
        prior_hessian(TVPrior((1, 80, 80)), torch.zeros(1, 80, 80), 1.0)


class _FixedFlow:
    """A stand-in fitted flow whose every sample is one image."""

    def __init__(self, image: torch.Tensor) -> None:
        self.image = image

    def sample(self, n: int):
        return self.image.expand(n, *self.image.shape).clone(), torch.zeros(n)


def test_laplace_stages_of_an_ensemble_start_at_the_members_aligned_mean(small_obs):
    """Closure data do not fix the position: members whose diagonal fits found the same image at different
    places give that image, moved onto the first member's place, as every member's Laplace start."""
    from posterior.reconstruct import PosteriorFit, ReconstructSettings, pooled_laplace_start

    geom = ImageGeometry(16, 160.0)
    image = torch.tensor(render("crescent", geom, flux=1.5), dtype=torch.float32).reshape(1, 16, 16)  # fits the data
    op = InterferometryOperator(small_obs, geom, products=("cphase", "logcamp"), total_flux=1.5, flux_sigma=0.03)
    moved = [image, torch.roll(image, (1, 2), dims=(-2, -1)), torch.roll(image, (-2, 0), dims=(-2, -1))]
    modes = [PosteriorFit(final=_FixedFlow(m)) for m in moved]
    x0 = pooled_laplace_start(ReconstructSettings(npix=16), modes, op)
    assert torch.allclose(x0, image, atol=1e-6)
    brighter = modes[:1] + [PosteriorFit(final=_FixedFlow(2 * image))]
    assert torch.allclose(pooled_laplace_start(ReconstructSettings(npix=16), brighter, op), 1.5 * image, atol=1e-6)
