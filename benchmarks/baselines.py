"""Speed of the posterior-sampling baselines on the shipped default prior (32x32).

    python benchmarks/baselines.py [--json OUT.json] [--repeats 3] [--steps 1000] [--batch 8]

1. DPS, ``--steps`` steps, batch ``--batch``, 32x32 deblurring: ours, beside the unconditional DDPM
   sampler on the same grid and network in the same process (``dps_vs_ddpm``: the cost of the guidance,
   one backward pass through the network per step), and beside deepinv's ``DPS`` (its DDPM solver, VP
   schedule, ``--steps`` steps, float32) driving the same network through a deepinv ``Denoiser`` adapter,
   on the same blur and noise as a deepinv ``Blur`` physics: ``dps_deepinv_s`` and
   ``dps_speed_ratio_vs_deepinv`` (ours / theirs). deepinv is optional (``pip install deepinv``); it needs
   a torchvision that loads against the installed torch (not the case for torch's CPU wheel and
   torchvision from PyPI: install torch and torchvision from PyPI together in a separate environment).
   Without it both keys are null and ``deepinv`` says why.
2. Each method's time per posterior sample on the same problem with its default settings
   (``*_s_per_sample``; PnP-ADMM and MAP give one point estimate).

Medians of ``--repeats`` runs after one warm-up (the per-method times: one run each).
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/posterior.py and priors.py would shadow the packages: keep this folder off the import path
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from interfero.io import atomic_write_text  # noqa: E402
from interfero.operators import GaussianBlur, GaussianNoise  # noqa: E402
from interfero.timing import median_seconds  # noqa: E402
from posterior.dps import DPSConfig, dps  # noqa: E402
from posterior.methods import run_method  # noqa: E402
from posterior.problem import InverseProblem  # noqa: E402
from priors.pretrained import load_prior  # noqa: E402
from priors.sampling import ddpm, time_grid  # noqa: E402


def problem():
    from priors.datasets.blackholes import make_black_holes

    prior = load_prior("default", elbo={"draws": 2, "importance": True})
    img = make_black_holes(1, 32, 160.0, seed=7, law="disk-lnflux")[0]
    op = GaussianBlur((1, 32, 32), 1.5, GaussianNoise(0.02 * float(img.max())))
    y = op.sample(torch.tensor(img), torch.Generator().manual_seed(0))
    return InverseProblem(op, y, prior), prior, torch.tensor(img)


def deepinv_dps(prior, truth: torch.Tensor, steps: int, batch: int):
    """deepinv's DPS on the benchmark's blur and noise of ``truth``, driving ``prior``'s network: a function
    that draws ``batch`` samples (images in the prior's units), or the reason it cannot run (deepinv missing
    or not loading)."""
    try:
        import deepinv as dinv
    except Exception as err:  # deepinv, or its torchvision, does not load
        return f"not timed: deepinv does not import here ({type(err).__name__}: {err})"

    class ScoreDenoiser(dinv.models.Denoiser):
        """The prior's denoiser (:meth:`ScorePrior.denoise`) in deepinv's [0, 1] units ``u = (z + 1) / 2``
        of the model's units ``z``: noise ``sigma`` in ``u`` is ``2 sigma scale`` in data units."""

        def forward(self, x, sigma, *args, **kwargs):
            sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
            x0 = prior.denoise(prior.from_z(2 * x.to(torch.float32) - 1), 2 * sig * prior.scale)
            return ((prior.to_z(x0) + 1) / 2).to(x.dtype)

    u = (prior.to_z(truth.reshape(1, 1, 32, 32).float()) + 1) / 2  # deepinv's [0, 1] units
    physics = dinv.physics.Blur(dinv.physics.functional.blur.gaussian_blur(sigma=(1.5, 1.5)), padding="circular",
                                noise_model=dinv.physics.GaussianNoise(0.02 * float(u.max() - u.min())))
    y = physics(u.expand(batch, -1, -1, -1))
    model = dinv.sampling.DPS(ScoreDenoiser(), num_steps=steps, dtype=torch.float32,
                              rng=torch.Generator().manual_seed(0))
    return lambda: prior.from_z(2 * model(y, physics) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--skip-methods", action="store_true", help="only the DPS timing")
    args = ap.parse_args()
    pb, prior, truth = problem()
    res = {"torch_threads": torch.get_num_threads(), "machine": platform.machine(), "repeats": args.repeats,
           "steps": args.steps, "batch": args.batch, "image": "32x32"}
    cfg = DPSConfig(steps=args.steps, n_samples=args.batch, batch=args.batch)
    res["dps_ours_s"] = median_seconds(lambda: dps(pb, cfg), args.repeats)
    ts = time_grid(prior.sde, args.steps)
    z = prior.sde.prior_sampling((args.batch, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    res["ddpm_same_grid_s"] = median_seconds(lambda: ddpm(prior.score_model, prior.sde, z, ts), args.repeats)
    res["dps_vs_ddpm"] = res["dps_ours_s"] / res["ddpm_same_grid_s"]
    theirs = deepinv_dps(prior, truth, args.steps, args.batch)
    if isinstance(theirs, str):
        res |= {"dps_deepinv_s": None, "dps_speed_ratio_vs_deepinv": None, "deepinv": theirs}
        tail = f"deepinv: {theirs}"
    else:
        import deepinv

        res["dps_deepinv_s"] = median_seconds(theirs, args.repeats)
        res["dps_speed_ratio_vs_deepinv"] = res["dps_ours_s"] / res["dps_deepinv_s"]
        res["deepinv"] = f"deepinv {deepinv.__version__}, torch {torch.__version__}"
        tail = f"deepinv {res['dps_deepinv_s']:.2f} s (ours / theirs {res['dps_speed_ratio_vs_deepinv']:.2f})"
    print(f"DPS {args.steps} steps, batch {args.batch}, 32x32: ours {res['dps_ours_s']:.2f} s; unconditional DDPM"
          f" {res['ddpm_same_grid_s']:.2f} s (ratio {res['dps_vs_ddpm']:.2f}); {tail}")
    if not args.skip_methods:
        print(f"{'method':>9s} {'s / sample':>11s} {'samples':>8s}")
        for name, opts in (("dps", {"n_samples": 8, "batch": 8}), ("ald", {"n_samples": 8, "batch": 8}),
                           ("sdedit", {"n_samples": 8, "batch": 8}), ("dpi", {}), ("pnp-admm", {}), ("map", {})):
            t0 = time.perf_counter()
            post = run_method(name, pb, opts)
            sec = time.perf_counter() - t0
            n = post.n_samples if name not in ("dpi",) else 1  # DPI: the fit is the cost; draws are free
            key = name.replace("-", "_")
            res[f"{key}_s_per_sample"] = sec / n
            res[f"{key}_s_total"] = sec
            print(f"{name:>9s} {sec / n:11.3f} {post.n_samples:8d}" + ("  (fit; then draws are ~free)" if name == "dpi"
                                                                       else ""))
    if args.json:
        atomic_write_text(args.json, json.dumps({k: (float(v) if isinstance(v, np.floating) else v)
                                                 for k, v in res.items()}, indent=2))


if __name__ == "__main__":
    main()
