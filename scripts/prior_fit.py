"""Can the reconstruction's flow represent the prior itself? DPI fitted to the prior alone (no data).

    python scripts/prior_fit.py [--prior default] [--steps 600] [--alpha 1] [--flow-layout auto]
        [--n 512] [--seed 0] [--threads 1] [--json OUT.json]

The flow, step size, batch and ELBO settings of ``interfero reconstruct`` (32x32 over 160 uas, started at
its 50 uas blob of the training images' median flux), fitted by the same objective with the data weight 0,
so its target is the score prior's density ``p_eps`` alone. A flow and surrogate that can carry the
posterior's uncertainty should at least reproduce the prior's spread: compared with ``--n`` fresh draws of
the prior's training generator (seed 20261201, unseen) plus the ``N(0, std(eps)^2)`` jitter that ``p_eps``
adds. Reports, for both, the mean per-pixel std, the total flux (mean and std, Jy) and the peak (mean,
Jy/pixel).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from interfero.errors import run_script
from interfero.io import ImageGeometry, atomic_write_text
from posterior.dpi import DPI, DPIConfig
from posterior.reconstruct import ReconstructSettings, reconstruction_flow
from priors.datasets.blackholes import make_black_holes
from priors.pretrained import load_prior

REFERENCE_SEED = 20261201


class PriorOnly:
    """DPI's target with no data: ``log p(y | x) = 0``."""

    def __init__(self, prior) -> None:
        self.prior = prior

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], dtype=x.dtype)

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        return self.prior.log_prob(x)


def summary(x: np.ndarray) -> dict:
    flux = x.sum(1)
    return {"pixel_std_mean": float(x.std(0).mean()), "flux_mean": float(flux.mean()),
            "flux_std": float(flux.std()), "peak_mean": float(x.max(1).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="default")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--flow-layout", default="auto", choices=("auto", "conv", "dense"))
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = ReconstructSettings(prior=args.prior, steps=args.steps, seed=args.seed, flow_layout=args.flow_layout,
                            alpha=args.alpha)
    prior = load_prior(args.prior, elbo={"draws": s.elbo_draws, "importance": True})
    law = (prior.training_data or {}).get("law", "disk-lnflux")
    ref = make_black_holes(args.n, s.npix, s.fov_uas, seed=REFERENCE_SEED, law=law)[0].reshape(args.n, -1)
    jitter = prior.eps_std
    ref = ref + jitter * np.random.default_rng(REFERENCE_SEED).standard_normal(ref.shape)
    flux = float(np.median(ref.sum(1)))
    flow = reconstruction_flow(s, ImageGeometry(s.npix, s.fov_uas), flux)
    cfg = DPIConfig(steps=s.steps, batch=s.batch, lr=s.lr, n_samples=args.n, seed=s.seed, alpha=s.alpha)
    t0 = time.perf_counter()
    post = DPI(flow, PriorOnly(prior), cfg, progress=True).fit().posterior()
    res = {"prior": prior.name, "steps": s.steps, "alpha": s.alpha, "flow_layout": args.flow_layout,
           "seconds": time.perf_counter() - t0, "jitter_jy_per_px": jitter,
           "flow": summary(np.asarray(post.samples, dtype=float).reshape(args.n, -1)),
           "training_draws_with_jitter": summary(ref)}
    print(json.dumps(res, indent=1))
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=1))


if __name__ == "__main__":
    run_script(main, "prior_fit")
