"""The score-matching KL bound (priors.score_error) against its closed form for two diffused Gaussians."""

import numpy as np
import torch

from priors.networks import GaussianScore
from priors.score_error import score_error_bound
from priors.sde import VPSDE


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
