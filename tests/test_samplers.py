"""Samplers of priors/sampling.py against closed forms (Gaussian data, exact diffused score)."""

from __future__ import annotations

import pytest
import torch

from interfero.errors import InterferoError
from priors.networks import GaussianScore
from priors.sampling import (
    ddim,
    ddim_step,
    ddpm,
    ddpm_step,
    denoised,
    noise_time,
    probability_flow,
    reverse_sde,
    time_grid,
)
from priors.score_prior import ScorePrior
from priors.sde import VESDE, VPSDE

LAM = torch.tensor([1e-3, 1e-2, 0.1, 1.0], dtype=torch.float64)


@pytest.fixture(scope="module")
def gauss():
    sde = VPSDE()
    score = GaussianScore(torch.full((1, 1, 4), 0.3), torch.diag(LAM), sde)
    x = sde.prior_sampling((20000, 1, 1, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alpha, std = (float(c) for c in sde.coefficients(torch.tensor(sde.eps, dtype=torch.float64)))
    return sde, score, x, alpha**2 * LAM + std**2, alpha * 0.3


@pytest.mark.parametrize("name", ["ddpm", "ddim0", "ddim_half", "pf_heun", "sde"])
def test_sampler_moments_match_closed_form(gauss, name):
    """Draws of ``p_eps`` from each sampler: variances ``alpha^2 lam + std^2`` (within 5%, 20000 draws, 1%
    standard error) and mean ``alpha mu`` (within 4 standard errors)."""
    sde, score, x, var, mean = gauss
    g = torch.Generator().manual_seed(1)
    run = {"ddpm": lambda: ddpm(score, sde, x, 1000, generator=g),
           "ddim0": lambda: ddim(score, sde, x, 500),
           "ddim_half": lambda: ddim(score, sde, x, 500, eta=0.5, generator=g),
           "pf_heun": lambda: probability_flow(score, sde, x, 100),
           "sde": lambda: reverse_sde(score, sde, x, 500, generator=g, denoise=False)}[name]
    out = run().reshape(-1, 4)
    torch.testing.assert_close(out.var(0), var, rtol=0.05, atol=0.0)
    err = (out.mean(0) - mean).abs() / (var / out.shape[0]).sqrt()  # in standard errors
    assert bool(torch.all(err < 4)), err


def test_ddim_with_eta_one_is_the_ddpm_step(gauss):
    sde, score, x, *_ = gauss
    t, s = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    xt = x[:10]
    x0 = denoised(score, sde, xt, t)
    noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(ddim_step(xt, x0, sde, t, s, 1.0, noise), ddpm_step(xt, x0, sde, t, s, noise))


def test_ddim_eta_zero_is_deterministic_and_tracks_the_pf_ode(gauss):
    sde, score, x, *_ = gauss
    a = ddim(score, sde, x[:50], 400)
    b = probability_flow(score, sde, x[:50], rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(a, ddim(score, sde, x[:50], 400))
    torch.testing.assert_close(a, b, rtol=0, atol=0.02)


def test_callback_gets_step_time_state_and_tweedie_estimate(gauss):
    sde, score, x, *_ = gauss
    seen = []
    ts = time_grid(sde, 5, dtype=torch.float64)

    def cb(i, t, xs, x0):
        seen.append((i, float(t), xs.clone(), x0.clone()))

    for sampler in (lambda: ddpm(score, sde, x[:3], ts, callback=cb),
                    lambda: reverse_sde(score, sde, x[:3], ts, callback=cb),
                    lambda: probability_flow(score, sde, x[:3], ts, callback=cb)):
        seen.clear()
        sampler()
        assert [s[0] for s in seen] == list(range(5))
        assert [s[1] for s in seen] == pytest.approx(ts[1:].tolist())
        torch.testing.assert_close(seen[0][3], denoised(score, sde, x[:3], ts[0]))


def test_noise_time_inverts_the_noise_to_signal_ratio():
    for sde in (VPSDE(), VESDE()):
        r = torch.tensor([0.02, 0.3, 5.0], dtype=torch.float64)
        alpha, std = sde.coefficients(noise_time(sde, r))
        torch.testing.assert_close(std / alpha, r, rtol=1e-8, atol=0)


def test_score_prior_denoiser_is_the_gaussian_mmse_denoiser():
    """``E[x | x + s n]`` of ``N(mu, C)`` is ``mu + C (C + s^2 I)^-1 (x_noisy - mu)``; the prior works in
    ``z = (x - shift) / scale``, so the data-unit noise level passes through the transform."""
    sde = VPSDE()
    shift, scale = 0.2, 2.0
    cov_z = torch.diag(LAM)
    prior = ScorePrior(GaussianScore(torch.zeros(1, 1, 4), cov_z, sde), sde, (1, 1, 4), shift=shift, scale=scale)
    xn = torch.randn(6, 1, 1, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    s = 0.4
    cov = scale**2 * cov_z
    want = shift + (cov @ torch.linalg.solve(cov + s**2 * torch.eye(4, dtype=torch.float64),
                                             (xn.reshape(6, 4) - shift).T)).T
    torch.testing.assert_close(prior.denoise(xn, s).reshape(6, 4), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(InterferoError, match="noise level"):
        prior.denoise(xn, -1.0)


def test_time_grid_refuses_bad_grids():
    sde = VPSDE()
    with pytest.raises(InterferoError, match="decreasing"):
        ddim(lambda x, t: x, sde, torch.zeros(1, 1, 1, 1), torch.tensor([0.1, 0.5]))
    with pytest.raises(InterferoError, match="start time"):
        time_grid(sde, 10, t_start=2.0)
    with pytest.raises(InterferoError, match="eta"):
        ddim(lambda x, t: x, sde, torch.zeros(1, 1, 1, 1), 3, eta=2.0)
