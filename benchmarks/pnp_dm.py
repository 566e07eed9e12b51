"""Cost of PnP-DM's pieces on closure data, and of a sweep with the Hessians renewed every sweep or every 4.

    python benchmarks/pnp_dm.py [--json OUT.json] [--chains 16] [--repeats 3] [--obs OBS.uvfits]

On an EHT observation (default: the shared EHT 2017 GRMHD observation; closure phases and log closure
amplitudes, 32x32 over 160 uas, the shipped default prior), one thread unless ``OMP_NUM_THREADS`` says
otherwise:

1. the pieces a sweep is made of, medians of ``--repeats`` after one warm-up: one network evaluation of
   ``--chains`` images (a DDPM step of the prior step), the Gauss-Newton Hessian of the data at one image and
   at ``--chains`` (``posterior.laplace.data_hessian``, in closed form) beside the generic one by automatic
   differentiation (the reference, ``Operator.gauss_newton_hessian``) and their ratio, the Cholesky
   factorisation of ``--chains`` of them, and one MALA
   step of all chains (likelihood gradient and triangular solves);
2. the DDPM steps of the prior step at each coupling of the default schedule (``prior_steps`` at
   ``rho_start``, fewer of the same size below it);
3. a whole short run (``--chains`` chains, 8 annealing sweeps, 2 at ``rho_min``, 100 Adam steps) with
   ``renew=1`` and ``renew=4``: seconds per sweep and their ratio (the reference is ``renew=1``, measured in
   the same process).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from interfero.io import atomic_write_text  # noqa: E402
from interfero.operators.base import Operator  # noqa: E402
from interfero.timing import median_seconds  # noqa: E402
from posterior.laplace import data_hessian, data_hessians  # noqa: E402
from posterior.pnp_dm import CholeskyMetric, PnPDMConfig, mala, pnp_dm, prior_step_counts  # noqa: E402
from posterior.problem import InverseProblem  # noqa: E402
from posterior.reconstruct import ReconstructSettings, build_problem, gaussian_blob  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared/data/observations/grmhd_sgra_2017/obs.uvfits"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--chains", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--obs", default=str(SHARED))
    args = ap.parse_args()
    s = ReconstructSettings()
    _, geom, op, prior, flux = build_problem(args.obs, s)
    problem = InverseProblem(op, op.data, prior, init=gaussian_blob(geom, flux, s.init_fwhm_uas)[None])
    m, d = args.chains, math.prod(problem.image_shape)
    g = torch.Generator().manual_seed(0)
    images = problem.initial_image()[:1].double() * (1 + 0.1 * torch.rand(m, 1, *problem.image_shape[1:],
                                                                           generator=g, dtype=torch.float64))
    z = prior.to_z(images.float())
    t = torch.full((m,), 0.05)
    res: dict = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                 "chains": m, "observation": str(args.obs)}
    with torch.no_grad():
        res["network_eval_s"] = median_seconds(lambda: prior.score_model(z, t), args.repeats)
    res["hessian_one_image_s"] = median_seconds(lambda: data_hessian(op, images[0]), args.repeats)
    res["hessian_all_chains_s"] = median_seconds(lambda: data_hessians(op, images), args.repeats)
    res["hessian_autodiff_one_image_s"] = median_seconds(lambda: Operator.gauss_newton_hessian(op, images[:1]),
                                                         args.repeats)
    eye = torch.eye(d, dtype=torch.float64)
    hz = data_hessians(op, images) * prior.scale**2 + eye / 0.1**2  # at rho = 0.1
    res["cholesky_all_chains_s"] = median_seconds(lambda: torch.linalg.cholesky(hz), args.repeats)
    metric = CholeskyMetric(torch.linalg.cholesky(hz))

    def log_target(u):
        return problem.log_likelihood(prior.from_z(u)) - ((u - z.double()) ** 2).flatten(1).sum(1) / (2 * 0.1**2)

    h = torch.full((m,), 0.5, dtype=torch.float64)
    res["mala_step_all_chains_s"] = median_seconds(lambda: mala(log_target, z.double(), h, 1, g, False, metric),
                                                args.repeats)
    cfg = PnPDMConfig()
    res["prior_steps_per_sweep"] = steps = prior_step_counts(cfg, prior.sde)
    for label, value in (("network evaluation", res["network_eval_s"]),
                         ("Hessian, one image", res["hessian_one_image_s"]),
                         ("Hessian, all chains", res["hessian_all_chains_s"]),
                         ("Hessian by autodiff, one", res["hessian_autodiff_one_image_s"]),
                         ("Cholesky, all chains", res["cholesky_all_chains_s"]),
                         ("MALA step, all chains", res["mala_step_all_chains_s"])):
        print(f"{label:<28} {value:9.4f} s  ({m} chains, {res['threads']} threads)", flush=True)
    res["hessian_speedup"] = res["hessian_autodiff_one_image_s"] / res["hessian_one_image_s"]
    print(f"{'closed-form Hessian':<28} {res['hessian_speedup']:9.2f}x faster than by autodiff", flush=True)
    print(f"{'DDPM steps per prior step':<28} {steps[0]} at rho_start ... {steps[-1]} at rho_min (default schedule:"
          f" {len(steps)} sweeps, {sum(steps)} in all against {cfg.prior_steps * len(steps)} at a fixed count)")
    runs = {}
    for renew in (1, 4):
        run_cfg = PnPDMConfig(n_samples=m, batch=m, anneal=8, sweeps=2, init_steps=100, renew=renew)
        t0 = time.perf_counter()
        pnp_dm(problem, run_cfg)
        runs[renew] = (time.perf_counter() - t0) / (run_cfg.anneal + run_cfg.sweeps)
        print(f"{f'run, renew={renew}':<28} {runs[renew]:9.3f} s per sweep (100 Adam steps included)", flush=True)
    res["seconds_per_sweep"] = {str(k): v for k, v in runs.items()}
    res["renew4_speedup"] = runs[1] / runs[4]
    print(f"{'renew=4 against renew=1':<28} {res['renew4_speedup']:9.2f}x faster", flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
