"""How far can the PF-ODE log p gradient be trusted? Adjoint vs backprop, tolerances, float32 vs float64.

    python scripts/gradient_accuracy.py [--prior default] [--n 2] [--json OUT.json]

On ``n`` images from the prior's training distribution, with one fixed
Rademacher probe (so every run integrates the same ODE), the reference is
backpropagation through dopri5 in float64 at rtol = atol = 1e-5. Every other
setting reports the largest |log p - reference| (nats), the smallest cosine
between its gradient and the reference gradient, and the function evaluations.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from interfero.io import atomic_write_text
from priors.datasets import make_dataset
from priors.ode import pf_ode_logp
from priors.pretrained import load_prior

SETTINGS = [("adjoint", "float32", 1e-2), ("adjoint", "float32", 1e-3), ("adjoint", "float32", 1e-4),
            ("adjoint", "float32", 1e-5), ("adjoint", "float64", 1e-3), ("adjoint", "float64", 1e-5),
            ("backprop", "float32", 1e-3), ("backprop", "float64", 1e-3)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default="default")
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    prior = load_prior(args.prior)
    size = prior.image_shape[-1]
    if (prior.fov_uas or 0) > 0:
        x = torch.from_numpy(make_dataset("blackholes", args.n, size, fov_uas=prior.fov_uas, seed=5)["images"])
    else:
        x = torch.from_numpy(make_dataset("face-gaussian", args.n, size, seed=5)["images"])
    z = prior.to_z(x).double()

    def run(gradient, dtype, tol):
        prior.score_model.to(getattr(torch, dtype))
        zs = z.to(getattr(torch, dtype)).clone().requires_grad_(True)
        t0 = time.perf_counter()
        res = pf_ode_logp(prior.score_model, prior.sde, zs, divergence="hutchinson", probes=1, gradient=gradient,
                          rtol=tol, atol=tol, generator=torch.Generator().manual_seed(0))
        (g,) = torch.autograd.grad(res.logp.sum(), zs)
        return res.logp.detach().double(), g.double(), res.nfe_forward, res.nfe, time.perf_counter() - t0

    ref = run("backprop", "float64", 1e-5)
    rows = []
    for gradient, dtype, tol in SETTINGS:
        try:
            lp, g, nf, nt, sec = run(gradient, dtype, tol)
            cos = torch.nn.functional.cosine_similarity(g.reshape(args.n, -1), ref[1].reshape(args.n, -1))
            rows.append({"gradient": gradient, "dtype": dtype, "rtol": tol,
                         "max_abs_dlogp": float((lp - ref[0]).abs().max()), "min_cos": float(cos.min()),
                         "nfe_forward": nf, "nfe_total": nt, "seconds": sec})
        except AssertionError as err:  # torchdiffeq's step-size failures
            rows.append({"gradient": gradient, "dtype": dtype, "rtol": tol, "error": str(err)})
        print(json.dumps(rows[-1]), flush=True)
    out = {"prior": prior.name, "n": args.n, "reference": {"gradient": "backprop", "dtype": "float64", "rtol": 1e-5,
                                                         "nfe_forward": ref[2], "seconds": ref[4]}, "rows": rows}
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2))


if __name__ == "__main__":
    from interfero.errors import run_script

    run_script(main, "gradient_accuracy")
