"""Exact PF-ODE log p, Hutchinson, gradients and the ELBO against the closed-form Gaussian (16x16 faces)."""

import math

import pytest
import torch

from interfero.errors import InterferoError
from priors.datasets.faces import face_gaussian
from priors.elbo import elbo
from priors.networks import GaussianScore
from priors.ode import pf_ode_logp
from priors.score_prior import ScorePrior
from priors.sde import VPSDE, _bcast
from priors.train import data_transform

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def gauss():
    g = face_gaussian(16)
    sde = VPSDE()
    score = g.diffused(sde)
    x = g.sample(6, generator=torch.Generator().manual_seed(0))
    exact = pf_ode_logp(score, sde, x, divergence="exact", gradient="none", rtol=1e-6, atol=1e-6)
    return g, sde, score, x, exact


def test_exact_trace_logp_equals_closed_form(gauss):
    g, sde, score, x, res = gauss
    truth = score.log_prob(x, sde.eps)  # the closed-form density of x(eps)
    # The model replaces p_T by pi = N(0, I); adding back that (closed-form) difference, the ODE is exact.
    correction = score.log_prob(res.z, sde.T) - sde.prior_logp(res.z)
    assert torch.max(torch.abs(res.logp + correction - truth)) < 2e-3
    # Uncentred data: alpha(T) = 6.6e-3 of the data mean survives in x(T), about 0.1 nat.
    assert torch.max(torch.abs(res.logp - truth)) < 0.2
    # x(eps) vs x(0): the eps-smoothing is small too
    assert torch.max(torch.abs(truth - g.log_prob(x))) < 0.5


def test_exact_logp_within_005_nats_with_training_transform(gauss):
    # As trained: pixels mapped to about [-1, 1] (priors.train.data_transform), so the data are roughly centred.
    g, sde, _, x, _ = gauss
    tr = data_transform(g.sample(1000, generator=torch.Generator().manual_seed(9)).numpy())
    gz = g.standardised(tr["shift"], tr["scale"])
    prior = ScorePrior(gz.diffused(sde), sde, (1, 16, 16), tr["shift"], tr["scale"], method="ode",
                       ode={"divergence": "exact", "gradient": "none", "rtol": 1e-6, "atol": 1e-6})
    z = prior.to_z(x)
    truth = gz.diffused(sde).log_prob(z, sde.eps) - 256 * math.log(tr["scale"])
    err = torch.abs(prior.log_prob(x) - truth)
    # what is left is the model's pi = N(0, I) in place of p_T (see test_exact_trace_logp_equals_closed_form)
    assert torch.mean(err) < 0.05 and torch.max(err) < 0.1


def test_hutchinson_is_unbiased(gauss):
    _, sde, score, x, exact = gauss
    for probe in ("rademacher", "gaussian"):
        xr = x[:2].repeat_interleave(24, 0)  # every batch item has its own probe
        res = pf_ode_logp(score, sde, xr, divergence="hutchinson", probe=probe, gradient="none", rtol=1e-6,
                          atol=1e-6, generator=torch.Generator().manual_seed(1))
        est = res.logp.reshape(2, 24)
        mean, se = est.mean(1), est.std(1) / 24**0.5
        assert torch.all(se > 0)
        assert torch.all(torch.abs(mean - exact.logp[:2]) < 3 * se + 1e-3), (mean, exact.logp[:2], se)


def test_hutchinson_reports_its_standard_error(gauss):
    """The per-solve standard error from K probes matches the spread of independent K-probe solves."""
    _, sde, score, x, exact = gauss
    xr = x[:1].repeat_interleave(48, 0)  # 48 independent 16-probe estimates of one image's log p
    res = pf_ode_logp(score, sde, xr, divergence="hutchinson", probes=16, gradient="none", rtol=1e-6, atol=1e-6,
                      generator=torch.Generator().manual_seed(3))
    spread = float(res.logp.std())
    reported = float(res.probe_sem.pow(2).mean().sqrt())
    assert 0.75 < reported / spread < 1.33, (reported, spread)
    assert abs(float(res.logp.mean()) - float(exact.logp[0])) < 3 * spread / 48**0.5 + 1e-3
    assert exact.probe_sem is None  # the exact trace has no probe noise
    one = pf_ode_logp(score, sde, x[:1], probes=1, gradient="none", rtol=1e-4, atol=1e-4)
    assert one.probe_sem is None and one.logp.shape == (1,)


@pytest.mark.parametrize("gradient", ["backprop", "adjoint"])
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_ode_gradient_matches_analytic(gauss, gradient, divergence):
    _, sde, score, x, _ = gauss
    xs = x[:2].clone().requires_grad_(True)
    res = pf_ode_logp(score, sde, xs, divergence=divergence, gradient=gradient, rtol=1e-5, atol=1e-5,
                      generator=torch.Generator().manual_seed(2))
    (gx,) = torch.autograd.grad(res.logp.sum(), xs)
    ga = score(x[:2], torch.full((2,), sde.eps, dtype=torch.float64))
    cos = torch.nn.functional.cosine_similarity(gx.reshape(2, -1), ga.reshape(2, -1))
    assert torch.all(cos > 0.999), cos
    if gradient == "adjoint":
        assert res.nfe > res.nfe_forward  # the backward solve ran


def test_float32_logp(gauss):
    _, sde, score, x, exact = gauss
    res = pf_ode_logp(score, sde, x[:2].float(), divergence="exact", gradient="none", rtol=1e-5, atol=1e-5)
    assert res.logp.dtype == torch.float32
    assert torch.max(torch.abs(res.logp.double() - exact.logp[:2])) < 0.05


def test_elbo_is_a_lower_bound_with_small_gap(gauss):
    _, sde, score, x, exact = gauss

    def noise(z, t):
        _, std = sde.coefficients(t)
        return -_bcast(std, z) * score(z, t)

    gen = torch.Generator().manual_seed(4)
    vals = torch.stack([elbo(noise, sde, x, draws=32, generator=gen) for _ in range(8)])  # (8, B)
    gap = vals - exact.logp[None]
    mean, se = gap.mean(), gap.std() / gap.numel() ** 0.5
    assert mean < 3 * se  # a lower bound, on average over draws
    assert mean > -3.0 - 3 * se  # documented: within ~3 nats for the exact score at 16x16 (docs/priors.md)


def test_score_prior_with_transform_and_methods(gauss):
    g, sde, score, x, exact = gauss
    # Gaussian data stored in units 10x larger: log p_x = log p_z - D log 10
    prior = ScorePrior(score, sde, (1, 16, 16), shift=0.0, scale=10.0, method="ode",
                       ode={"divergence": "exact", "gradient": "none", "rtol": 1e-6, "atol": 1e-6})
    lp = prior.log_prob(10 * x[:2])
    torch.testing.assert_close(lp, exact.logp[:2] - 256 * torch.log(torch.tensor(10.0, dtype=torch.float64)))
    assert prior.normalised == "exact"
    s = prior.score(10 * x[:2])
    torch.testing.assert_close(s, score(x[:2], torch.full((2,), sde.eps, dtype=torch.float64)) / 10)
    prior.method = "elbo"
    assert prior.normalised == "bound"
    xs = (10 * x[:2]).requires_grad_(True)
    val = prior.log_prob(xs, generator=torch.Generator().manual_seed(0))
    (gx,) = torch.autograd.grad(val.sum(), xs)
    assert val.shape == (2,) and torch.all(torch.isfinite(gx))


def test_adjoint_fails_without_landing_on_endpoints(gauss):
    # torchdiffeq steps past the end time; backwards that means t < eps (NaN std for t < 0): the documented cause
    _, sde, score, x, _ = gauss
    xs = x[:1].clone().requires_grad_(True)
    res = pf_ode_logp(score, sde, xs, divergence="hutchinson", gradient="adjoint", rtol=1e-6, atol=1e-6,
                      land_on_endpoints=False, generator=torch.Generator().manual_seed(0))
    with pytest.raises(AssertionError, match="underflow in dt"):
        torch.autograd.grad(res.logp.sum(), xs)


def test_probability_flow_sampler_inverts_the_encoding(gauss):
    # x -> z(T) by the log p solve, and back by the sampler's PF-ODE (which must land exactly on eps)
    from priors.sampling import probability_flow

    _, sde, score, x, exact = gauss
    back = probability_flow(score, sde, exact.z[:2], rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(back, x[:2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("t", [1e-3, 0.3])
def test_tweedie_denoise_is_the_gaussian_posterior_mean(gauss, t):
    # E[x0 | xt] = mu + cov alpha (alpha^2 cov + sigma^2 I)^-1 (xt - alpha mu), independent of the score code
    from priors.sampling import tweedie_denoise

    g, sde, score, x, _ = gauss
    alpha, sigma = (float(c) for c in sde.coefficients(torch.tensor(t, dtype=torch.float64)))
    gen = torch.Generator().manual_seed(3)
    xt = alpha * x.double() + sigma * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    mu, cov = g.mean.reshape(-1), g.cov
    d = mu.numel()
    rhs = (xt.reshape(len(xt), -1) - alpha * mu).T
    eye = torch.eye(d, dtype=cov.dtype)
    want = mu[:, None] + alpha * cov @ torch.linalg.solve(alpha**2 * cov + sigma**2 * eye, rhs)
    got = tweedie_denoise(score, sde, xt, t)
    torch.testing.assert_close(got.reshape(len(xt), -1), want.T, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(("denoise", "steps", "tol"), [(False, 500, 0.05), (True, 500, 0.05), (True, 100, 0.1)])
def test_sde_sampler_variances_match_closed_form(denoise, steps, tol):
    """Reverse-SDE draws from an analytic Gaussian score have the closed-form variances.

    ``denoise=False``: draws of ``p_eps``, variance ``alpha^2 lam + sigma^2``; ``denoise=True``: Tweedie's
    ``E[x0 | x(eps)]`` of such draws, variance ``alpha^2 lam^2 / (alpha^2 lam + sigma^2)``. Variances from
    below to well above ``sigma(eps)^2`` (1.1e-4) catch a time grid too coarse near ``eps`` (a uniform
    one gives 2.9x the variance at 1e-5)."""

    sde = VPSDE()
    lam = torch.tensor([1e-5, 1e-4, 1e-3, 1e-2, 1.0], dtype=torch.float64)
    score = GaussianScore(torch.zeros(1, 1, 5), torch.diag(lam), sde)
    prior = ScorePrior(score, sde, (1, 1, 5))
    n = 20000
    x = prior.sample(n, steps=steps, generator=torch.Generator().manual_seed(0), batch=n,
                     denoise=denoise).double().reshape(n, -1)
    alpha, sigma = (float(c) for c in sde.coefficients(torch.tensor(sde.eps, dtype=torch.float64)))
    v = alpha**2 * lam + sigma**2
    want = alpha**2 * lam**2 / v if denoise else v
    # 20000 draws: 1% standard error of a variance; the discretisation adds a little
    torch.testing.assert_close(x.var(0), want, rtol=tol, atol=0.0)


def test_uniform_time_grid_overshoots_the_smallest_variances():
    from priors.sampling import reverse_sde

    sde = VPSDE()
    score = GaussianScore(torch.zeros(1, 1, 1), torch.tensor([[1e-5]], dtype=torch.float64), sde)
    z = sde.prior_sampling((20000, 1, 1, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma2 = float(sde.coefficients(torch.tensor(sde.eps))[1]) ** 2
    v = {sp: float(reverse_sde(score, sde, z, 500, torch.Generator().manual_seed(1), denoise=False,
                               spacing=sp).var()) / (sigma2 + 1e-5) for sp in ("uniform", "log")}
    assert v["uniform"] > 2.0 and abs(v["log"] - 1) < 0.05, v


def test_hutchinson_with_gaussian_control_variate(gauss):
    """A Gaussian fitted to 20000 draws as control variate: still unbiased, with a far smaller spread."""

    g, sde, score, x, exact = gauss
    control = GaussianScore.fit(g.sample(20000, generator=torch.Generator().manual_seed(5)), sde)
    assert not torch.allclose(control.lam, score.lam)  # an imperfect fit: the residual Jacobian is not zero
    xr = x[:2].repeat_interleave(24, 0)
    spread = {}
    for ctrl in (None, control):
        res = pf_ode_logp(score, sde, xr, divergence="hutchinson", probe="rademacher", gradient="none", rtol=1e-6,
                          atol=1e-6, generator=torch.Generator().manual_seed(1), control=ctrl)
        est = res.logp.reshape(2, 24)
        se = est.std(1) / math.sqrt(24)
        assert torch.all(torch.abs(est.mean(1) - exact.logp[:2]) < 3 * se + 1e-3), (est.mean(1), exact.logp[:2])
        spread[ctrl is None] = float(est.std(1).mean())
    assert spread[False] < 0.25 * spread[True], spread


def test_control_variate_needs_a_closed_form_divergence(gauss):

    g, sde, score, x, _ = gauss
    with pytest.raises(InterferoError, match="closed-form divergence"):
        pf_ode_logp(score, sde, x[:1], gradient="none", control=lambda z, t: z)
    with pytest.raises(InterferoError, match="at least 2 finite samples"):
        GaussianScore_fit = type(score).fit
        GaussianScore_fit(x[:1], sde)


def test_time_grid_ends_exactly_and_rejects_bad_input():
    from priors.sampling import time_grid

    sde = VPSDE()
    ts = time_grid(sde, 7)
    assert ts[0] == sde.T and ts[-1] == torch.tensor(sde.eps, dtype=ts.dtype) and torch.all(ts[1:] < ts[:-1])
    with pytest.raises(InterferoError, match="at least 1 step"):
        time_grid(sde, 0)
    with pytest.raises(InterferoError, match="unknown time spacing"):
        time_grid(sde, 5, "cosine")


def test_score_method_gives_the_closed_form_gradient_and_no_value(gauss):
    """``method="score"``: value 0, gradient the closed-form ``grad_x log p_eps`` in data units (autograd of the
    diffused Gaussian's log-density through the training transform), and the network is not differentiated."""
    g, sde, _, x, _ = gauss
    shift, scale = 0.3, 2.5
    gz = g.standardised(shift, scale)
    net = gz.diffused(sde)
    prior = ScorePrior(net, sde, (1, 16, 16), shift, scale, method="score")
    assert prior.normalised == "gradient"
    xs = x[:3].clone().requires_grad_(True)
    lp = prior.log_prob(xs)
    assert lp.shape == (3,) and torch.all(lp == 0)
    (got,) = torch.autograd.grad(lp.sum(), xs)
    xr = x[:3].clone().requires_grad_(True)
    (want,) = torch.autograd.grad(net.log_prob(prior.to_z(xr), sde.eps).sum(), xr)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    assert torch.linalg.vector_norm(want) > 1.0  # a real gradient, not zero
