"""Per-pixel spread of reconstruct's flows against an exact interferometric Gaussian posterior.

    python scripts/validate_flow_base.py [--array EHT2017] [--steps 1000] [--json OUT.json] [--threads 1]

A white Gaussian prior of the shipped prior's jitter (``std`` 1.24 mJy per pixel) around a 40 uas
Gaussian blob of 2 Jy on reconstruct's grid (32x32 pixels over 160 uas); complex visibilities of the
array's simulated uv-coverage (Sgr A*, 24 h, a scan every 10 min) with their thermal noise, drawn from a
prior draw. The posterior is Gaussian in closed form (``posterior.dpi.exact_gaussian_posterior``): the
prior's spread in every direction except the few hundred Fourier components the array measures.
Two fits with reconstruct's settings (batch 16, Adam 2e-3, ``--steps``), both started at the exact
posterior mean:

- ``diagonal``: reconstruct's flow (conv RealNVP couplings, bounded scales, a diagonal base);
- ``laplace``: the same flow with the correlated base of ``--flow-base laplace``, built from
  ``posterior.laplace`` (the operator's Gauss-Newton Hessian plus the prior's Hessian from its score);
- ``dct``: the diagonal flow over orthonormal DCT coefficients (``--flow-basis dct``).

Reports the median over pixels of the flow's std over the exact std (``std_ratio``; 1 is right, below 1
too narrow) and of |mean error| / exact std; beside them the same ratio for the best diagonal Gaussian
(the reverse-KL optimum of a mean-field fit: variance ``1 / P_kk`` per coordinate of the precision ``P``)
over pixels and over DCT coefficients (``mean_field_std_ratio``), in closed form.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from interfero.io import ImageGeometry
from interfero.operators.base import GaussianNoise
from interfero.operators.image import MatrixOperator
from interfero.operators.visibility import dft_matrix
from interfero.uvcoverage import uv_coverage
from posterior.dpi import DPI, DPIConfig, DPITarget, exact_gaussian_posterior
from posterior.flows import dct_matrix
from posterior.laplace import correlated_base, laplace_precision
from posterior.reconstruct import ReconstructSettings, gaussian_blob, reconstruction_flow
from posterior.report import write_json
from priors.classical import GaussianPrior

JITTER = 1.24e-3  # Jy/pixel: the shipped black-hole priors' eps_std
FLUX = 2.0  # Jy


def problem(array: str, seed: int = 0):
    """Operator, data, prior and the exact posterior's mean (Jy/pixel) and covariance."""
    geom = ImageGeometry(32, 160.0)
    obs = uv_coverage(array)
    a = dft_matrix(obs.u, obs.v, geom)
    a = np.concatenate([a.real, a.imag], 0)
    sigma = np.concatenate([obs.sigma, obs.sigma])
    mean = gaussian_blob(geom, FLUX, 40.0).numpy().reshape(-1).astype(np.float64)
    cov = JITTER**2 * np.eye(mean.size)
    rng = np.random.default_rng(seed)
    y = a @ (mean + JITTER * rng.standard_normal(mean.size)) + sigma * rng.standard_normal(sigma.size)
    post_mean, post_cov = exact_gaussian_posterior(a, sigma, y, mean, cov)
    op = MatrixOperator((1, 32, 32), a, GaussianNoise(torch.tensor(sigma)))
    prior = GaussianPrior(torch.tensor(mean).reshape(1, 32, 32), torch.tensor(cov))
    return op, torch.tensor(y), prior, post_mean, post_cov


def mean_field_std_ratio(post_cov: np.ndarray) -> dict[str, float]:
    """Median over pixels of the best diagonal Gaussian's std over the exact std, with the diagonal over
    pixels and over orthonormal DCT coefficients: over orthonormal coordinates ``c = M x`` the reverse-KL
    optimum has variance ``1 / (M P M^T)_kk`` (``P`` the exact precision), which ``x = M^T c`` carries to
    the pixels."""
    precision, exact = np.linalg.inv(post_cov), np.sqrt(np.diag(post_cov))
    d = dct_matrix(int(round(post_cov.shape[0] ** 0.5))).numpy()
    bases = {"pixel": np.eye(post_cov.shape[0]), "dct": np.kron(d, d)}  # row-major: vec(D X D^T) = (D kron D) vec(X)
    return {k: float(np.median(np.sqrt((m.T**2) @ (1 / np.diag(m @ precision @ m.T))) / exact))
            for k, m in bases.items()}


def fit(base_kind: str, op, y, prior, post_mean, post_std, steps: int, samples: int, seed: int) -> dict:
    start = torch.tensor(post_mean).reshape(1, 32, 32)
    base = None
    if base_kind == "laplace":
        base = (*correlated_base(laplace_precision(op, prior, start, JITTER, smoothed=False), JITTER), JITTER)
    # reconstruct's flow (a score prior's: identity output)
    s = ReconstructSettings(seed=seed, flow_basis="dct" if base_kind == "dct" else "pixel")
    flow = reconstruction_flow(s, ImageGeometry(s.npix, s.fov_uas), FLUX, start.float(), base).double()
    t0 = time.perf_counter()
    cfg = DPIConfig(steps=steps, batch=16, lr=2e-3, n_samples=samples, seed=seed)
    post = DPI(flow, DPITarget(op, y, prior), cfg, progress=False).fit().posterior()
    m, s = post.mean.reshape(-1), post.std.reshape(-1)
    return {"flow": base_kind, "std_ratio": float(np.median(s / post_std)),
            "mean_error_over_std": float(np.median(np.abs(m - post_mean) / post_std)),
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--array", default="EHT2017")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    op, y, prior, post_mean, post_cov = problem(args.array, args.seed)
    post_std = np.sqrt(np.diag(post_cov))
    rows = [fit(k, op, y, prior, post_mean, post_std, args.steps, args.samples, args.seed)
            for k in ("diagonal", "laplace", "dct")]
    best = mean_field_std_ratio(post_cov)
    print(f"{args.array}: exact posterior std {np.median(post_std):.3g} Jy/px (median; prior {JITTER:g});"
          f" best diagonal Gaussian std / exact: {best['pixel']:.3f} over pixels, {best['dct']:.3f} over DCT")
    for r in rows:
        print(f"{r['flow']:>9}: std / exact {r['std_ratio']:.3f},"
              f" |mean error| / std {r['mean_error_over_std']:.3f}, {r['seconds']:.0f} s")
    if args.json:
        write_json({"array": args.array, "steps": args.steps, "exact_std_median": float(np.median(post_std)),
                    "mean_field_std_ratio": best,
                    "fits": rows}, args.json)


if __name__ == "__main__":
    from interfero.errors import run_script

    run_script(main, "validate_flow_base")
