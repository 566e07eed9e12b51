"""Posterior-sampling baselines (DPS, Score-ALD, SDEdit, PnP-ADMM, MAP) on the shared problem interface,
checked against exact Gaussian posteriors and for their one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interfero.errors import InterferoError
from interfero.operators import Denoising, GaussianNoise, PoissonNoise, random_inpainting
from posterior.dpi import exact_gaussian_posterior
from posterior.methods import METHODS, method_config, run_method
from posterior.problem import InverseProblem
from posterior.validation import operator_matrix
from priors.classical import GaussianPrior, TVPrior
from priors.score_prior import ScorePrior
from priors.sde import VPSDE

SHAPE = (1, 4, 4)


def _gaussian(seed: int = 0) -> GaussianPrior:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(16, 16, generator=g, dtype=torch.float64) * 0.15
    cov = a @ a.T + 0.01 * torch.eye(16, dtype=torch.float64)
    mean = torch.linspace(0.2, 0.8, 16, dtype=torch.float64).reshape(SHAPE)
    return GaussianPrior(mean, cov)


def _problem(op, sigma: float, seed: int = 0, score: bool = True, offset: float = 0.0):
    gp = _gaussian(seed)
    gp = GaussianPrior(gp.mean + offset, gp.cov)
    sde = VPSDE()
    prior = ScorePrior(gp.diffused(sde), sde, SHAPE, name="gaussian") if score else gp
    gen = torch.Generator().manual_seed(seed + 1)
    x = gp.sample(1, generator=gen).float()
    y = op.sample(x, generator=gen)
    a = operator_matrix(op, SHAPE)
    mean, cov = exact_gaussian_posterior(a, sigma, y.reshape(-1).double().numpy(), gp.mean.reshape(-1).numpy(),
                                         gp.cov.numpy())
    return InverseProblem(op, y, prior), mean, np.sqrt(np.diag(cov)), gp


@pytest.fixture(scope="module")
def denoise():
    return _problem(Denoising(SHAPE, GaussianNoise(0.2)), 0.2)


def _rel(a, b):
    return float(np.median(np.abs(a.reshape(-1) - b) / np.abs(b)))


def test_ald_samples_the_exact_gaussian_posterior(denoise):
    pb, mean, std, _ = denoise
    post = run_method("ald", pb, {"n_samples": 2048, "batch": 2048})
    assert _rel(post.mean, mean) < 0.05 and _rel(post.std, std) < 0.10, (_rel(post.mean, mean), _rel(post.std, std))


def test_ald_on_inpainting_samples_the_unobserved_pixels():
    op = random_inpainting(SHAPE, 0.5, seed=3, noise=GaussianNoise(0.1))
    pb, mean, std, _ = _problem(op, 0.1, seed=2)
    post = run_method("ald", pb, {"n_samples": 2048, "batch": 2048})
    assert _rel(post.mean, mean) < 0.05 and _rel(post.std, std) < 0.10, (_rel(post.mean, mean), _rel(post.std, std))


@pytest.mark.parametrize("task,start", [("denoise", "blob"), ("inpaint", "blob"), ("inpaint", "prior")])
def test_pnp_dm_samples_the_gaussian_posterior_of_the_rho_smoothed_prior(task, start):
    """Split Gibbs returns the likelihood copy ``v``, whose law is exactly the posterior under the prior
    convolved with ``N(0, rho_min^2)``: a closed form for a Gaussian prior and a linear operator, from either
    start."""
    op, sigma, seed = ((Denoising(SHAPE, GaussianNoise(0.2)), 0.2, 0) if task == "denoise" else
                       (random_inpainting(SHAPE, 0.5, seed=3, noise=GaussianNoise(0.1)), 0.1, 2))
    pb, _, exact_std, gp = _problem(op, sigma, seed=seed)
    rho = 0.05
    mean, cov = exact_gaussian_posterior(operator_matrix(op, SHAPE), sigma, pb.y.reshape(-1).double().numpy(),
                                         gp.mean.reshape(-1).numpy(), gp.cov.numpy() + rho**2 * np.eye(16))
    std = np.sqrt(np.diag(cov))
    post = run_method("pnp-dm", pb, {"n_samples": 2048, "batch": 2048, "rho_min": rho, "start": start})
    assert _rel(post.mean, mean) < 0.03 and _rel(post.std, std) < 0.05, (_rel(post.mean, mean), _rel(post.std, std))
    assert 0.3 < np.mean(post.diagnostics["acceptance_final"]) < 0.9
    assert np.all(std > exact_std)  # the smoothing widens the posterior: what the check above tells apart


def test_pnp_dm_prior_start_begins_each_chain_at_its_own_prior_draw(denoise):
    """With no ascent and one short sweep the chains stay near where they start: all near the start image
    (``blob``), or spread as the prior (``prior``: per-pixel std that of the Gaussian prior)."""
    pb, _, _, gp = denoise
    prior_std = np.sqrt(np.diag(gp.cov.numpy()))
    opts = {"init_steps": 0, "anneal": 0, "sweeps": 1, "langevin_steps": 1, "rho_min": 0.05, "n_samples": 1024,
            "batch": 1024}
    spread = {s: run_method("pnp-dm", pb, opts | {"start": s}).samples.reshape(1024, -1).std(0)
              for s in ("blob", "prior")}
    assert np.median(spread["blob"] / prior_std) < 0.3, np.median(spread["blob"] / prior_std)
    assert abs(np.median(spread["prior"] / prior_std) - 1) < 0.15, np.median(spread["prior"] / prior_std)


def test_pnp_dm_prior_steps_keep_one_size_as_rho_falls():
    """``prior_steps`` DDPM steps from rho_start; below it fewer, none longer (in log time) than those at
    rho_start, and not one more than that needs."""
    import math

    from posterior.pnp_dm import PnPDMConfig, coupling_schedule, prior_step_counts
    from priors.sampling import noise_time

    sde = VPSDE()
    cfg = PnPDMConfig(prior_steps=20, anneal=30, sweeps=3, rho_min=0.05)
    counts = prior_step_counts(cfg, sde)
    times = [float(noise_time(sde, r)) for r in coupling_schedule(cfg)]
    size0 = math.log(times[0] / sde.eps) / 20
    assert counts[0] == 20 and len(counts) == 33 and counts == sorted(counts, reverse=True) and counts[-1] < 10
    for n, t in zip(counts, times):
        assert math.log(t / sde.eps) / n <= size0 * (1 + 1e-9)  # no step longer than at rho_start
        assert n == 1 or math.log(t / sde.eps) / (n - 1) > size0  # and no step more than that needs


def test_pnp_dm_refuses_a_coupling_below_the_prior_s_smallest_noise_level(denoise):
    with pytest.raises(InterferoError, match="smallest noise level"):
        run_method("pnp-dm", denoise[0], {"rho_min": 0.01, "n_samples": 2, "batch": 2})


def _mala_moments(log_target, metric, steps: int, dim: int = 3, chains: int = 4000, seed: int = 0):
    from posterior.pnp_dm import mala

    g = torch.Generator().manual_seed(seed)
    v = torch.full((chains, dim), 0.5, dtype=torch.float64)
    h = torch.full((chains,), 0.5, dtype=torch.float64)
    v, h, _ = mala(log_target, v, h, 200, g, True, metric)  # adapt the step sizes
    v, h, rate = mala(log_target, v, h, steps, g, False, metric)
    return v.numpy(), float(rate.mean())


def _check_moments(w: np.ndarray, scales: np.ndarray, rate: float) -> None:
    """Samples ``w`` (centred on the target's mean) have mean 0 and std ``scales`` per axis."""
    err_mean = np.abs(w.mean(0)) / scales
    err_std = np.abs(w.std(0) / scales - 1)
    assert np.all(err_mean < 0.08) and np.all(err_std < 0.06) and 0.4 < rate < 0.8, (err_mean, err_std, rate)


@pytest.mark.parametrize("preconditioned", [False, True])
def test_mala_samples_a_gaussian_and_its_metric_undoes_bad_scaling(preconditioned):
    """Unpreconditioned MALA mixes over ``(largest / smallest scale)^2`` steps; with the covariance as its
    (shared, eigen-form) metric, a 100:1 scaling costs nothing."""
    from posterior.pnp_dm import EigenMetric

    scales = torch.tensor([0.01 if preconditioned else 0.4, 0.3, 1.0], dtype=torch.float64)
    mu = torch.tensor([0.2, -1.0, 0.5], dtype=torch.float64)
    metric = EigenMetric(torch.eye(3, dtype=torch.float64), scales**2) if preconditioned else None
    v, rate = _mala_moments(lambda u: -0.5 * (((u - mu) / scales) ** 2).sum(1), metric,
                            100 if preconditioned else 2000)
    _check_moments(v - mu.numpy(), scales.numpy(), rate)


def test_mala_with_a_cholesky_metric_per_chain_samples_a_rotated_badly_scaled_gaussian():
    from posterior.pnp_dm import CholeskyMetric

    scales = torch.tensor([0.01, 0.3, 1.0], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    precision = q @ torch.diag(scales**-2) @ q.T
    mu = q @ torch.tensor([0.2, -1.0, 0.5], dtype=torch.float64)
    metric = CholeskyMetric(torch.linalg.cholesky(precision).expand(4000, 3, 3))
    v, rate = _mala_moments(lambda u: -0.5 * (((u - mu) @ precision) * (u - mu)).sum(1), metric, 100)
    _check_moments(((torch.tensor(v) - mu) @ q).numpy(), scales.numpy(), rate)  # back on the scales' axes


def test_mala_rejects_proposals_where_the_target_is_not_finite():
    """A half-normal (log-density -inf below 0, where the gradient is NaN): no chain ever leaves the support,
    and the moments are the half-normal's."""
    def log_target(u):
        return torch.where(u[:, 0] > 0, -0.5 * (u**2).sum(1), torch.log(u[:, 0]))

    v, _ = _mala_moments(log_target, None, 400, dim=1)
    assert np.all(v > 0)
    assert abs(v.mean() - math.sqrt(2 / math.pi)) < 0.03 and abs(v.std() - math.sqrt(1 - 2 / math.pi)) < 0.03


def test_pnp_admm_with_the_exact_denoiser_reaches_the_posterior_mean(denoise):
    """For a Gaussian prior the MMSE denoiser is the proximal map of the (scaled) log-density, so PnP-ADMM's
    fixed point is the MAP, which is the posterior mean; the data step is exact (conjugate gradients)."""
    pb, mean, _, _ = denoise
    post = run_method("pnp-admm", pb, {})
    assert post.diagnostics["exact_data_step"] and post.diagnostics["point_estimate"]
    assert _rel(post.mean, mean) < 0.01
    assert np.all(post.std == 0)


def test_map_with_a_closed_form_prior_is_the_posterior_mean(denoise):
    _, mean, _, gp = denoise
    pb = InverseProblem(denoise[0].operator, denoise[0].y, gp)
    post = run_method("map", pb, {"iterations": 300})
    np.testing.assert_allclose(post.mean.reshape(-1), mean, rtol=1e-3, atol=1e-4)


def test_map_with_tv_runs_on_any_operator_and_lowers_the_objective(denoise):
    pb0 = denoise[0]
    pb = InverseProblem(pb0.operator, pb0.y, TVPrior(SHAPE, weight=2.0))
    x0 = pb.initial_image()
    post = run_method("map", pb, {"iterations": 100})
    x = torch.tensor(post.mean[None], dtype=torch.float32)
    assert float(pb.log_prob(x)) > float(pb.log_prob(x0)) + 1.0


def test_lbfgs_backs_off_non_finite_steps_and_finds_the_minimum():
    """A pseudo-Huber bowl, NaN beyond z = 3: far out it is nearly linear, so the secant curvature is tiny
    and the quasi-Newton step overshoots into the NaN region; it must be halved, not taken."""
    from posterior.map_estimate import lbfgs

    def fun(z):
        r = torch.sqrt(1 + (z - 1) ** 2).sum()
        return torch.where(torch.all(z < 3), r, torch.full_like(r, float("nan")))

    z, f, evals = lbfgs(fun, torch.tensor([-50.0, -20.0]), iterations=500)
    assert any(v != v for v in evals)  # the guard was exercised
    np.testing.assert_allclose(z.numpy(), [1.0, 1.0], atol=1e-4)
    assert f < 2 + 1e-8


def test_map_log_transform_keeps_images_positive_and_matches_pixel_search(denoise):
    """With a positive start the search runs over log-pixels; on a problem whose optimum is positive it
    lands where the pixel search lands."""
    pb0 = denoise[0]
    y = pb0.y - pb0.y.min() + 0.5  # data of a strictly positive image: the TV-MAP optimum is positive
    pb = InverseProblem(pb0.operator, y, TVPrior(SHAPE, weight=0.5))
    log_run = run_method("map", pb, {"iterations": 400, "transform": "auto"})
    pix_run = run_method("map", pb, {"iterations": 400, "transform": "none"})
    assert log_run.diagnostics["transform"] == "log" and np.all(log_run.mean > 0)
    np.testing.assert_allclose(log_run.mean, pix_run.mean, atol=2e-3)
    with pytest.raises(InterferoError, match="transform"):
        run_method("map", pb, {"transform": "sqrt"})


def test_dps_moves_prior_draws_to_the_data(denoise):
    """DPS is approximate (no exact-posterior claim), but with the data its samples sit far closer to the
    posterior mean than prior draws do, and a tiny step size gives back the prior."""
    pb, mean, _, gp = denoise
    post = run_method("dps", pb, {"n_samples": 64, "batch": 64, "steps": 200, "zeta": 1.0})
    weak = run_method("dps", pb, {"n_samples": 64, "batch": 64, "steps": 200, "zeta": 1e-6})
    err = np.abs(post.mean.reshape(-1) - mean).mean()
    err_weak = np.abs(weak.mean.reshape(-1) - mean).mean()
    assert err < 0.5 * err_weak, (err, err_weak)
    np.testing.assert_allclose(weak.mean.reshape(-1), gp.mean.reshape(-1).numpy(), atol=4 * 1.0 / 8)


def test_dps_with_poisson_noise_reduces_the_deviance():
    op = Denoising(SHAPE, PoissonNoise(gain=20.0))
    pb, *_ = _problem(op, 1.0, seed=4, offset=3.0)  # positive images: Poisson rates
    post = run_method("dps", pb, {"n_samples": 16, "batch": 16, "steps": 100, "zeta": 0.5})
    prior_only = run_method("dps", pb, {"n_samples": 16, "batch": 16, "steps": 100, "zeta": 1e-6})
    sat = pb.saturated_log_likelihood()

    def dev(p):
        return float(-2 * (pb.log_likelihood(torch.tensor(p.samples, dtype=torch.float32)) - sat).mean())

    assert math.isfinite(dev(post)) and dev(post) < 0.5 * dev(prior_only)


def test_sdedit_interpolates_between_the_data_and_the_prior(denoise):
    pb, _, _, gp = denoise
    y = pb.y.reshape(-1).double().numpy()
    near = run_method("sdedit", pb, {"t0": 0.01, "steps": 50, "n_samples": 256, "batch": 256})
    far = run_method("sdedit", pb, {"t0": 1.0, "steps": 200, "n_samples": 256, "batch": 256})
    assert np.abs(near.mean.reshape(-1) - y).mean() < 0.05
    np.testing.assert_allclose(far.mean.reshape(-1), gp.mean.reshape(-1).numpy(), atol=0.15)


def test_samples_are_reproducible_from_the_seed(denoise):
    pb = denoise[0]
    a = run_method("ald", pb, {"n_samples": 4, "batch": 2, "levels": 20})
    b = run_method("ald", pb, {"n_samples": 4, "batch": 2, "levels": 20})
    np.testing.assert_array_equal(a.samples, b.samples)


@pytest.mark.parametrize(("method", "options", "match"), [
    ("nope", {}, "unknown method"),
    ("dps", {"zeta": -1.0}, "zeta"),
    ("dps", {"zeta": "abc"}, "expected a float"),
    ("dps", {"bogus": 1}, "unknown setting"),
    ("sdedit", {"t0": 0.0}, "t0"),
    ("sdedit", {"t0": 1.5}, "t0"),
    ("ald", {"lr": 2.0}, "lr"),
    ("ald", {"levels": 1}, "levels"),
    ("pnp-admm", {"sigma_end": 2.0, "sigma_start": 1.0}, "sigma_end"),
    ("map", {"iterations": 0}, "iterations"),
    ("pnp-dm", {"rho_min": 2.0, "rho_start": 1.0}, "rho_min"),
    ("pnp-dm", {"prior_steps": 0}, "prior_steps"),
    ("pnp-dm", {"renew": 0}, "renew"),
    ("pnp-dm", {"start": "map"}, "start"),
])
def test_bad_settings_are_one_line_errors(method, options, match):
    with pytest.raises(InterferoError, match=match):
        method_config(method, options)


@pytest.mark.parametrize("method", ["dps", "ald", "sdedit", "pnp-admm", "pnp-dm"])
def test_score_methods_refuse_a_prior_without_a_score(denoise, method):
    pb0 = denoise[0]
    with pytest.raises(InterferoError, match="score-based prior"):
        run_method(method, InverseProblem(pb0.operator, pb0.y, TVPrior(SHAPE)), {})


def test_non_finite_states_stop_the_sampler_naming_the_step(denoise):
    pb0 = denoise[0]
    sde = VPSDE()
    calls = {"n": 0}

    def bad_score(z, t):
        calls["n"] += 1
        return z * (float("nan") if calls["n"] > 3 else 1.0)

    pb = InverseProblem(pb0.operator, pb0.y, ScorePrior(bad_score, sde, SHAPE))
    with pytest.raises(InterferoError, match=r"dps: non-finite values at step 3"):
        run_method("dps", pb, {"n_samples": 2, "batch": 2, "steps": 10})


def test_every_method_is_registered_with_a_validating_config():
    for name, (cls, fn) in METHODS.items():
        cfg = cls()
        cfg.validate()
        assert callable(fn), name


def test_likelihood_curvature_is_the_operator_norm_over_sigma_squared():
    """``||A||^2 / sigma^2``: 1 / 0.2^2 for denoising; the blur's largest transfer value (1, at zero
    frequency) for a blur."""
    from interfero.operators import GaussianBlur

    x = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(0))
    for op, want in ((Denoising(SHAPE, GaussianNoise(0.2)), 25.0), (GaussianBlur(SHAPE, 1.0, GaussianNoise(0.5)), 4.0)):
        pb = InverseProblem(op, op(x), TVPrior(SHAPE))
        assert pb.likelihood_curvature(x) == pytest.approx(want, rel=1e-6)


def test_gaussian_kl_closed_form():
    from posterior.validation_baselines import gaussian_kl

    m = np.zeros(2)
    c = np.eye(2)
    assert gaussian_kl(m, c, m, c) == pytest.approx(0.0, abs=1e-12)
    # 1-D per axis: KL(N(0,1) || N(1,4)) = log 2 + (1 + 1) / 8 - 1/2
    want = 2 * (math.log(2) + 2 / 8 - 0.5)
    assert gaussian_kl(m, c, np.ones(2), 4 * c) == pytest.approx(want, rel=1e-12)


def test_saturated_log_likelihood_is_the_likelihood_at_the_data():
    op = Denoising(SHAPE, GaussianNoise(0.3))
    y = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(0))
    pb = InverseProblem(op, y, TVPrior(SHAPE))
    assert pb.saturated_log_likelihood() == pytest.approx(float(pb.log_likelihood(y)), rel=1e-6)
    assert float(pb.log_likelihood(y + 0.1)) < pb.saturated_log_likelihood()


def test_a_noise_model_without_per_measurement_deviance_is_refused_where_needed(denoise):
    """A nonlinear operator's curvature needs per-measurement deviances; a noise model without them is a
    one-line error naming it, not a traceback."""
    from interfero.operators import NoiseModel, Operator

    class Plain(NoiseModel):
        def sample(self, y, generator=None):
            return y

        def log_likelihood(self, y_pred, y_obs):
            return -((y_pred - y_obs) ** 2).reshape(y_pred.shape[0], -1).sum(-1)

    class Square(Operator):
        def forward(self, x):
            return x**2

        def pseudo_inverse(self, y):
            return y.clamp_min(0).sqrt()

    pb0 = denoise[0]
    op = Square(SHAPE, Plain())
    pb = InverseProblem(op, op(torch.ones(1, *SHAPE)), pb0.prior)
    with pytest.raises(InterferoError, match="Plain gives no per-measurement deviance"):
        run_method("dps", pb, {"n_samples": 2, "batch": 2, "steps": 2})
