"""The score-matching KL bound, the Tweedie sum bias and the white-noise curvature (priors.score_error) against
closed forms for diffused Gaussians."""

import numpy as np
import pytest
import torch

from interfero.errors import InterferoError
from priors.elbo import elbo
from priors.networks import GaussianScore
from priors.score_error import score_error_bound, subspace_gain, tweedie_sum_bias, white_noise_curvature
from priors.sde import VPSDE, _bcast


def test_bound_is_zero_for_the_true_score_and_matches_closed_form():
    sde = VPSDE()
    d = 16
    lam_p = torch.linspace(0.01, 1.0, d, dtype=torch.float64)
    lam_q = lam_p * 1.3
    p = GaussianScore(torch.zeros(1, 4, 4), torch.diag(lam_p), sde)
    q = GaussianScore(torch.zeros(1, 4, 4), torch.diag(lam_q), sde)
    x0 = p.sample(4000, generator=torch.Generator().manual_seed(0))
    zero, _, _ = score_error_bound(p, p, sde, x0, n_t=5, generator=torch.Generator().manual_seed(1))
    assert torch.all(zero.abs() < 1e-9)
    est, ts, per_t = score_error_bound(q, p, sde, x0, n_t=80, generator=torch.Generator().manual_seed(1))
    # closed form: E|s_q - s_p|^2 = sum_i (1/v_q - 1/v_p)^2 v_p, v = alpha^2 lam + std^2; fine quadrature in t
    t = torch.from_numpy(np.geomspace(sde.eps, sde.T, 20001))
    alpha, std = sde.coefficients(t)
    vp = alpha[:, None] ** 2 * lam_p + std[:, None] ** 2
    vq = alpha[:, None] ** 2 * lam_q + std[:, None] ** 2
    integrand = 0.5 * sde.diffusion(t) ** 2 * ((1 / vq - 1 / vp) ** 2 * vp).sum(-1)
    exact = float(torch.trapezoid(integrand, t))
    assert abs(float(est.mean()) - exact) < 0.03 * exact, (float(est.mean()), exact)
    assert per_t.shape == ts.shape == (80,)


def test_tweedie_sum_bias_vanishes_for_the_true_score_and_matches_closed_form_for_a_shifted_mean():
    sde = VPSDE()
    lam = torch.linspace(0.01, 1.0, 16, dtype=torch.float64)
    mean = torch.full((1, 4, 4), 0.5, dtype=torch.float64)
    p = GaussianScore(mean, torch.diag(lam), sde)
    x0 = p.sample(4000, generator=torch.Generator().manual_seed(0))
    ts = [1e-3, 0.05, 0.3, 0.6]
    bias, se = tweedie_sum_bias(p, sde, x0, ts, generator=torch.Generator().manual_seed(1))
    assert bias.shape == se.shape == (4,) and np.all(se > 0)
    assert np.all(np.abs(bias) < 4 * se), (bias, se)
    # a model whose mean is off by delta per pixel: E[x0|xt] - x0 sums to sum_i std^2 delta / (alpha^2 lam_i + std^2)
    delta = 0.05
    q = GaussianScore(mean + delta, torch.diag(lam), sde)
    bias_q, se_q = tweedie_sum_bias(q, sde, x0, ts, generator=torch.Generator().manual_seed(1))
    alpha, std = sde.coefficients(torch.tensor(ts, dtype=torch.float64))
    exact = (std[:, None] ** 2 * delta / (alpha[:, None] ** 2 * lam + std[:, None] ** 2)).sum(-1).numpy()
    assert np.all(np.abs(bias_q - exact) < 4 * se_q + 1e-9), (bias_q, exact, se_q)
    assert exact[-1] > 10 * se_q[-1]  # the shifted model's bias is resolved, not lost in the noise


def test_subspace_gain_is_one_for_the_true_score_and_the_closed_form_ratio_for_a_wrong_variance():
    sde = VPSDE()
    lam_p = torch.linspace(0.01, 1.0, 16, dtype=torch.float64)
    lam_q = lam_p.clone()
    lam_q[:8] *= 1.3  # the model is 30% too broad in the first 8 coordinates only
    p = GaussianScore(torch.zeros(1, 4, 4), torch.diag(lam_p), sde)
    q = GaussianScore(torch.zeros(1, 4, 4), torch.diag(lam_q), sde)
    x0 = p.sample(20000, generator=torch.Generator().manual_seed(0))
    eye = torch.eye(16, dtype=torch.float64)
    bases = {"low": eye[:, :8], "high": eye[:, 8:]}
    ts = [1e-3, 0.05]
    same = subspace_gain(p, p, sde, x0, bases, ts, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(same["low_gain"], 1.0, atol=1e-12)
    np.testing.assert_allclose(same["high_relerr2"], 0.0, atol=1e-12)
    got = subspace_gain(q, p, sde, x0, bases, ts, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(got["high_gain"], 1.0, atol=1e-12)
    # closed form: s_q / s_p = v_p / v_q per coordinate, v = alpha^2 lam + std^2; |s_p|^2 weights 1 / v_p
    alpha, std = sde.coefficients(torch.tensor(ts, dtype=torch.float64))
    vp = alpha[:, None] ** 2 * lam_p[:8] + std[:, None] ** 2
    vq = alpha[:, None] ** 2 * lam_q[:8] + std[:, None] ** 2
    exact = ((vp / vq) / vp).sum(-1) / (1 / vp).sum(-1)
    np.testing.assert_allclose(got["low_gain"], exact.numpy(), rtol=0.02)
    assert got["low_gain"][0] < 0.8 and np.all(got["low_relerr2"] > 0.01)  # near 1 / 1.3 at eps


@pytest.mark.parametrize("small", [1e-8, 1.0])
def test_white_noise_curvature_of_the_elbo_is_the_closed_form_one(small):
    """The ELBO of an exact Gaussian score, a bound of log p_eps, is as sharp along white noise as log p_eps
    itself, v^T H_eps v: for a law without variance in 56 of 64 directions (ratio near 1, the jitter's own)
    and for one with the jitter's variance there (about half as sharp)."""
    sde, d = VPSDE(), 64
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    _, s = sde.coefficients(torch.tensor([sde.eps], dtype=torch.float64))
    s = float(s[0])
    lam = torch.cat([torch.full((8,), 0.3, dtype=torch.float64),
                     torch.full((d - 8,), small * s**2, dtype=torch.float64)])
    g = GaussianScore(torch.zeros(1, 8, 8, dtype=torch.float64), (q * lam) @ q.T, sde)

    def noise(z, t):
        return -_bcast(sde.coefficients(t)[1], z) * g(z, t)

    x = g.sample(4, generator=gen) + s * torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    state = gen.get_state()
    second, ratio = white_noise_curvature(lambda y, gg: elbo(noise, sde, y, draws=16, generator=gg), x, s,
                                          repeats=64, seed=7, generator=gen)
    gen.set_state(state)
    v = s * torch.randn(x.shape, generator=gen, dtype=torch.float64)  # the same direction
    te = torch.full((4,), sde.eps, dtype=torch.float64)
    exact = ((g(x + v, te) - g(x, te)) * v).flatten(1).sum(1)  # the score is affine: v^T H v
    np.testing.assert_allclose(second.numpy(), exact.numpy(), rtol=0.05)
    expect = (exact / (-(v.flatten(1) ** 2).sum(1) / s**2)).numpy()
    assert np.all(expect > (0.8 if small < 1e-3 else 0.4)) and np.all(expect < (1.0 if small < 1e-3 else 0.6))
    np.testing.assert_allclose(ratio.numpy(), expect, rtol=0.05)


def test_white_noise_curvature_refuses_a_zero_std_or_no_repeats():
    x = torch.zeros(1, 1, 4, 4)
    for std, repeats in ((0.0, 4), (1.0, 0)):
        with pytest.raises(InterferoError, match="white-noise curvature"):
            white_noise_curvature(lambda y, g: y.flatten(1).sum(1), x, std, repeats=repeats)
