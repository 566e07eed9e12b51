"""SDEs against their own differential equations, and the PF-ODE machinery against scipy."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from priors.ode import PFODEDynamics, pf_ode_logp
from priors.sde import SDE, VESDE, VPSDE, SubVPSDE, sde_from_config

SDES = [VPSDE(), SubVPSDE(), VESDE()]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: s.name)
def test_marginals_solve_the_moment_equations(sde):
    # For dx = -0.5 b x dt + g dw: d alpha/dt = -0.5 b alpha, d var/dt = -b var + g^2 (var = std^2).
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    a1, s1 = sde.coefficients(t + h)
    a0, s0 = sde.coefficients(t - h)
    a, s = sde.coefficients(t)
    b, g = sde.drift_rate(t), sde.diffusion(t)
    np.testing.assert_allclose((a1 - a0) / (2 * h), -0.5 * b * a, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose((s1**2 - s0**2) / (2 * h), -b * s**2 + g**2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: s.name)
def test_config_round_trip_and_prior(sde):
    again = sde_from_config(sde.config())
    assert again.config() == sde.config()
    z = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z).sum((1, 2, 3))
    torch.testing.assert_close(sde.prior_logp(z), ref)
    x = sde.prior_sampling((20000,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(float(x.std()) / sde.prior_std - 1) < 0.02


class DummySDE(SDE):
    """score_sde's test SDE: f = x, g = sqrt(2 t); paired with the score t x^2 / 5."""

    name = "dummy"

    def drift_rate(self, t):
        return torch.full_like(torch.as_tensor(t, dtype=torch.float64), -2.0)

    def diffusion(self, t):
        return torch.sqrt(2 * torch.as_tensor(t, dtype=torch.float64))

    def coefficients(self, t):
        raise NotImplementedError

    @property
    def prior_std(self):
        return 1.0

    def int_drift_rate(self, t0, t1):
        return -2.0 * (t1 - t0)


def dummy_score(x, t):
    return t.reshape(-1, *([1] * (x.ndim - 1))) * x**2 / 5


def test_dummy_drift_and_divergence_exact():
    sde = DummySDE(eps=1e-3)
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor(0.7, dtype=torch.float64)
    dyn = PFODEDynamics(dummy_score, sde, "exact", None, chunk=3, keep_graph=False)
    drift, div = dyn(t, (x, torch.zeros(3, dtype=torch.float64)))
    torch.testing.assert_close(drift, x - t**2 * x**2 / 5)  # f - 0.5 g^2 s = x - t * t x^2 / 5
    torch.testing.assert_close(div, (1 - 2 * t**2 * x / 5).reshape(3, -1).sum(-1))


def test_dummy_ode_and_logp_match_scipy():
    sde = DummySDE(eps=1e-3)
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.5
    res = pf_ode_logp(dummy_score, sde, x, divergence="exact", gradient="none", rtol=1e-8, atol=1e-8)

    def rhs(t, y):
        xs = y[:-1]
        return np.concatenate([xs - t**2 * xs**2 / 5, [np.sum(1 - 2 * t**2 * xs / 5)]])

    for i in range(2):
        y0 = np.concatenate([x[i].reshape(-1).numpy(), [0.0]])
        sol = solve_ivp(rhs, (1e-3, 1.0), y0, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(res.z[i].reshape(-1).numpy(), sol.y[:-1, -1], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(float(res.delta_logp[i]), sol.y[-1, -1], rtol=1e-3, atol=1e-4)
        prior = -0.5 * np.sum(sol.y[:-1, -1] ** 2) - 2 * math.log(2 * math.pi)
        np.testing.assert_allclose(float(res.logp[i]), prior + sol.y[-1, -1], rtol=1e-3, atol=1e-4)
    assert res.nfe_forward > 0
