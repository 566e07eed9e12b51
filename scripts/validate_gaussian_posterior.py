"""Analytic check of DPI (paper Figure 5): a Gaussian prior, a linear measurement, a known posterior.

    python scripts/validate_gaussian_posterior.py [--steps 2000] [--samples 4096] [--prior exact|score]
        [--flow glow-dense|reconstruct] [--batch 64] [--lr 1e-3] [--json OUT.json] [--out DIR]

Prior: the 16x16 face-Gaussian (priors.datasets.faces). Measurement: the
lowest 6.25% of the orthonormal DFT frequencies (4x4, real and imaginary
parts) with i.i.d. noise sigma = 1. The posterior is Gaussian in closed form
(posterior.dpi.exact_gaussian_posterior). DPI fits, by reverse KL, ``--flow glow-dense``: a dense Glow
flow (its learned LU linear maps can represent any Gaussian), or ``--flow reconstruct``: the flow
``interfero reconstruct`` fits by default (conv RealNVP couplings, bounded scales, identity output; give
it reconstruct's ``--batch 16 --lr 2e-3 --steps 600`` to check those settings too), with

- ``--prior exact``: the Gaussian's own log-density;
- ``--prior score``: the shipped score-based prior ``faces16`` trained on
  samples of that Gaussian (``--score-method elbo`` or ``ode``).

Reports the median over pixels of |mean_DPI - mean_true| / |mean_true| and
|std_DPI - std_true| / std_true (and the median of std_DPI / std_true) from ``--samples`` flow samples; writes a PNG
(true and DPI mean/std) and a JSON with ``mean_rel_err`` and ``std_rel_err``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from interfero.plotting import plt, save_figure
from posterior.dpi import DPI, DPIConfig, DPITarget
from posterior.flows import build_flow
from posterior.report import write_json
from posterior.validation import gaussian_dft_problem


def run(steps: int, samples: int, prior: str = "exact", score_method: str = "elbo", batch: int = 64,
        lr: float = 1e-3, seed: int = 0, progress: bool = False, elbo_draws: int = 8,
        flow_kind: str = "glow-dense") -> dict:
    pb = gaussian_dft_problem(seed=seed)
    if prior == "exact":
        p = pb.prior
    else:
        from priors.pretrained import load_prior

        p = load_prior("faces16", method=score_method, expect_image_size=16,
                       elbo={"draws": elbo_draws, "importance": True})
    if flow_kind == "glow-dense":
        flow = build_flow(pb.prior.image_shape, kind="glow", layout="dense", blocks=4, hidden=128, output="none",
                          init=pb.prior.mean.float(), init_spread=0.1, seed=seed)
    else:  # reconstruct's own flow, started at the prior mean; its pixel scale flux / npix^2 is the mean pixel
        from interfero.io import ImageGeometry
        from posterior.reconstruct import ReconstructSettings, reconstruction_flow

        n = pb.prior.image_shape[-1]
        flow = reconstruction_flow(ReconstructSettings(npix=n, flow_output="none", seed=seed), ImageGeometry(n, 1.0),
                                   float(pb.prior.mean.abs().sum()), init=pb.prior.mean.float().reshape(1, n, n))
    cfg = DPIConfig(steps=steps, batch=batch, lr=lr, n_samples=samples, seed=seed)
    t0 = time.perf_counter()
    dpi = DPI(flow, DPITarget(pb.operator, pb.y.float(), p), cfg, progress=progress).fit()
    post = dpi.posterior()
    m, s = post.mean.reshape(-1), post.std.reshape(-1)
    return {
        "prior": prior if prior == "exact" else f"faces16 ({score_method})",
        "elbo_draws": elbo_draws if prior == "score" and score_method == "elbo" else None,
        "flow": flow_kind, "steps": steps, "n_samples": samples, "batch": batch, "lr": lr,
        "seconds": time.perf_counter() - t0,
        "mean_rel_err": float(np.median(np.abs(m - pb.post_mean) / np.abs(pb.post_mean))),
        "std_rel_err": float(np.median(np.abs(s - pb.post_std) / pb.post_std)),
        "std_ratio": float(np.median(s / pb.post_std)),  # below 1: too narrow
        "_arrays": (pb.post_mean, pb.post_std, m, s),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--flow", choices=("glow-dense", "reconstruct"), default="glow-dense")
    ap.add_argument("--prior", choices=("exact", "score"), default="exact")
    ap.add_argument("--score-method", choices=("elbo", "ode"), default="elbo")
    ap.add_argument("--elbo-draws", type=int, default=8, help="time/noise draws per image of the ELBO prior")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument("--out", default="outputs/validate_gaussian_posterior")
    args = ap.parse_args()
    res = run(args.steps, args.samples, args.prior, args.score_method, args.batch, lr=args.lr, seed=args.seed,
              progress=True, elbo_draws=args.elbo_draws, flow_kind=args.flow)
    tm, ts, m, s = res.pop("_arrays")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    for ax, img, title in zip(axes, (tm, m, ts, s), ("true mean", "DPI mean", "true std", "DPI std")):
        im = ax.imshow(img.reshape(16, 16), cmap="gray" if "mean" in title else "viridis")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"mean rel err {res['mean_rel_err']:.3f}, std rel err {res['std_rel_err']:.3f} ({res['prior']})")
    save_figure(fig, out / f"gaussian_posterior_{args.prior}_{args.flow}.png")
    for k, v in res.items():
        print(f"{k:>14}: {v:.4g}" if isinstance(v, float) else f"{k:>14}: {v}")
    if args.json:
        write_json(res, args.json)


if __name__ == "__main__":
    from interfero.errors import run_script

    run_script(main, "validate_gaussian_posterior")
