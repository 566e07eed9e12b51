"""How far a score model is from a known score: the score-matching bound on the KL divergence.

For data ``x_0 ~ p`` diffused by an SDE with diffusion ``g(t)``, a score model
``s_theta`` and the true score ``s*`` of ``p_t``, Song, Durkan, Murray & Ermon
(2021, Theorem 1) bound the KL divergence of the model's reverse SDE::

    KL(p_eps || p_theta) <= 1/2 int_eps^T g(t)^2 E || s_theta(x_t, t) - s*(x_t, t) ||^2 dt + KL(p_T || pi).

:func:`score_error_bound` evaluates the first term per image ``x_0`` (nats):
the integrand by one noise draw per ``(t, image)`` on a geometric grid of
``t``, the integral by the trapezoidal rule. It needs the true score, so it is
a validation tool for problems with a closed form (the face-fitted Gaussian):
it tells, in nats and cheaply, whether a network is accurate enough for an
exact log p, and at which ``t`` it is not.

:func:`tweedie_sum_bias` needs no true score: for an exact score, Tweedie's
``E[x_0 | x_t]`` averages over ``x_t ~ p_t`` to ``E[x_0]`` at every ``t``, so
the mean of ``sum(E[x_0 | x_t] - x_0)`` over data draws (the total-flux error
of the denoiser, for images) must vanish within its standard error. Where it
does not, the model's low-frequency (total-flux) content is biased at that
noise level: a check any trained image prior can run on its training law.

:func:`white_noise_curvature` asks how sharp a (stochastic) log-density is
along pixel-scale white noise, in units of the white Gaussian ``N(0, std^2 I)``
whose curvature ``-|v|^2 / std^2`` an exact ``log p_eps`` has in directions the
training images do not vary: 1 = as sharp as the SDE's own jitter at ``eps``,
below 1 softer (the density lets pixel noise through more freely), above 1
sharper. For a posterior's width in directions the data do not measure, this is
what the prior term contributes.

:func:`subspace_gain` says *how* a score is off where the bound says it is: in
each given subspace (e.g. eigenvectors of a known covariance) the least-squares
gain of the model score on the true one. A gain below 1 at small ``t`` is a
model density too broad in those directions, above 1 too narrow; the exact
log p integrates that into a per-image error that grows with the image's
chi^2 in the subspace, which no affine fit removes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from interfero.errors import InterferoError

from .sde import SDE, _bcast


def _scores_at(score_model, true_score, sde: SDE, x0: torch.Tensor, t: float,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Model and true score, ``(B, D)`` float64 each, at one draw ``x_t = alpha x0 + std z`` per image."""
    tt = torch.full((x0.shape[0],), t, dtype=x0.dtype)
    alpha, std = sde.coefficients(tt)
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    xt = _bcast(alpha, x0) * x0 + _bcast(std, x0) * z
    with torch.no_grad():
        model = score_model(xt, tt).double().reshape(x0.shape[0], -1)
    return model, true_score(xt.double(), tt.double()).double().reshape(x0.shape[0], -1)


def score_error_bound(score_model, true_score, sde: SDE, x0: torch.Tensor, n_t: int = 25,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Per image ``(B,)`` float64: ``1/2 int g^2 |s_theta - s*|^2 dt`` (nats); also the grid ``t`` and the
    integrand averaged over images (``(n_t,)``), to see where the error lies.

    ``score_model(x, t)`` and ``true_score(x, t)`` are scores in the same (model) units as ``x0``.
    """
    ts = np.geomspace(sde.eps, sde.T, n_t)
    rows = []
    for t in ts:
        model, true = _scores_at(score_model, true_score, sde, x0, float(t), generator)
        g2 = float(sde.diffusion(torch.tensor(float(t), dtype=torch.float64)) ** 2)
        rows.append(0.5 * g2 * (model - true).pow(2).sum(-1))
    vals = torch.stack(rows)  # (n_t, B)
    per_image = torch.trapezoid(vals, torch.from_numpy(ts), dim=0)
    return per_image, ts, vals.mean(1).numpy()


def tweedie_sum_bias(score_model, sde: SDE, x0: torch.Tensor, ts, generator: torch.Generator | None = None,
                     batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per time in ``ts``: the mean over images of ``sum(E_model[x_0 | x_t] - x_0)`` (summed over pixels, model
    units) and its standard error, one noise draw per image, ``(len(ts),)`` each.

    Zero in expectation for the exact score (the tower rule); ``score_model(x, t)`` in the units of ``x0``.
    """
    from .sampling import tweedie_denoise

    means, ses = [], []
    for t in ts:
        diffs = []
        for start in range(0, x0.shape[0], batch):
            xb = x0[start:start + batch]
            tt = torch.full((xb.shape[0],), float(t), dtype=xb.dtype)
            mean, std = sde.marginal_prob(xb, tt)
            xt = mean + _bcast(std, xb) * torch.randn(xb.shape, generator=generator, dtype=xb.dtype)
            with torch.no_grad():
                diffs.append((tweedie_denoise(score_model, sde, xt, float(t)) - xb).reshape(xb.shape[0], -1).sum(-1))
        d = torch.cat(diffs).double()
        means.append(float(d.mean()))
        ses.append(float(d.std() / math.sqrt(d.numel())) if d.numel() > 1 else float("nan"))
    return np.array(means), np.array(ses)


def subspace_gain(score_model, true_score, sde: SDE, x0: torch.Tensor, bases: dict[str, torch.Tensor], ts,
                  generator: torch.Generator | None = None) -> dict[str, np.ndarray]:
    """Per subspace and time: ``<P s_theta, P s*> / |P s*|^2`` summed over images (``gain``) and
    ``|P (s_theta - s*)|^2 / |P s*|^2`` (``relerr2``), one noise draw per image and ``t``.

    ``bases`` maps a name to an orthonormal basis ``(D, k)`` of flattened images (``D`` pixels); the result maps
    ``"<name>_gain"`` and ``"<name>_relerr2"`` to ``(len(ts),)`` arrays, and ``"t"`` to the times.
    Scores in the units of ``x0``; the same ratios hold for noise predictions (both scale by ``-std(t)``).
    """
    out: dict[str, list] = {f"{k}_{m}": [] for k in bases for m in ("gain", "relerr2")}
    for t in ts:
        model, true = _scores_at(score_model, true_score, sde, x0, float(t), generator)
        for name, basis in bases.items():
            a, b = model @ basis.double(), true @ basis.double()
            norm = float(b.pow(2).sum())
            out[f"{name}_gain"].append(float((a * b).sum()) / norm)
            out[f"{name}_relerr2"].append(float((a - b).pow(2).sum()) / norm)
    return {"t": np.asarray(ts, dtype=float)} | {k: np.array(v) for k, v in out.items()}


def white_noise_curvature(log_prob, x: torch.Tensor, std: float, repeats: int = 32, seed: int = 0,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the second difference of ``log_prob`` along a random white direction ``v`` of ``std`` per
    pixel, ``L(x + v) - 2 L(x) + L(x - v)`` (for a quadratic ``L`` exactly ``v^T H v``), and that figure in
    units of the white Gaussian's, divided by ``-|v|^2 / std^2``.

    ``log_prob(y, generator)`` returns ``(B,)``; a stochastic one (the ELBO) is averaged over ``repeats``
    calls, the three points drawing the same random numbers (a generator seeded ``seed`` for each point), so
    that its noise largely cancels in the difference. ``v`` is drawn from ``generator``. ``x`` and ``std``
    in the units ``log_prob`` takes.
    """
    if not std > 0 or repeats < 1:
        raise InterferoError(f"white-noise curvature needs std > 0 and repeats >= 1, got {std} and {repeats}")
    v = std * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)

    def mean_log_prob(y: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            return torch.stack([log_prob(y, g).double() for _ in range(repeats)]).mean(0)

    second = mean_log_prob(x + v) - 2 * mean_log_prob(x) + mean_log_prob(x - v)
    white = -v.reshape(v.shape[0], -1).double().pow(2).sum(-1) / std**2
    return second, second / white
