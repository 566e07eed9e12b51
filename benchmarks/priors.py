"""Score-prior benchmarks: exact PF-ODE log p vs the ELBO surrogate, and training speed.

    python benchmarks/priors.py [--json OUT.json] [--repeats 3] [--batch 8]

Per image, at equal batch, on the shipped priors (``faces16`` at 16x16, the
32x32 ``bh32``, whose network ``bh32disk`` and ``bh32lnflux``, the default, share; images drawn from each
prior's own training data):

1. ``log p`` with its gradient by the PF-ODE: Hutchinson (1 Rademacher probe),
   dopri5 at rtol = atol = 1e-3, gradient by the adjoint; time and function
   evaluations (forward and adjoint solves).
2. The ELBO with its gradient (1 and 8 draws per image).
3. Their ratio (goal >= 100x for the 1-draw ELBO).
4. Training steps per second of the bh32 recipe (batch 32, 32x32, width 32).

Medians of ``--repeats`` runs after one warm-up; the ODE log p (minutes per
32x32 image) runs ``--ode-repeats`` times (default 1) without a warm-up.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is called priors.py: keep its own folder off the import path so `priors` is the package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from interfero.io import atomic_write_text  # noqa: E402
from priors.datasets import make_dataset  # noqa: E402
from priors.datasets.store import write_dataset  # noqa: E402
from priors.pretrained import load_prior, shipped_priors  # noqa: E402
from priors.train import TrainConfig, Trainer  # noqa: E402


def median_time(fn, repeats: int, warmup: bool = True) -> tuple[float, object]:
    out = fn() if warmup else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def images_for(name: str, n: int) -> torch.Tensor:
    if name.startswith("faces"):
        return torch.from_numpy(make_dataset("face-gaussian", n, 16, seed=11)["images"])
    prior = load_prior(name)
    return torch.from_numpy(make_dataset("blackholes", n, prior.image_shape[-1], seed=11)["images"])


def bench_logp(name: str, batch: int, repeats: int, ode_repeats: int) -> dict:
    prior = load_prior(name)
    x0 = images_for(name, batch)
    prior.ode_kwargs = {"divergence": "hutchinson", "probes": 1, "probe": "rademacher", "gradient": "adjoint",
                        "rtol": 1e-3, "atol": 1e-3}
    nfe = {}

    def ode():
        x = x0.clone().requires_grad_(True)
        from priors.ode import pf_ode_logp

        res = pf_ode_logp(prior.score_model, prior.sde, prior.to_z(x), generator=torch.Generator().manual_seed(0),
                          **prior.ode_kwargs)
        res.logp.sum().backward()
        nfe["forward"], nfe["total"] = res.nfe_forward, res.nfe
        return x.grad

    def elbo_fn(draws):
        def run():
            x = x0.clone().requires_grad_(True)
            prior.elbo_kwargs = {"draws": draws, "importance": True}
            prior.log_prob(x, method="elbo", generator=torch.Generator().manual_seed(0)).sum().backward()
            return x.grad

        return run

    # one ODE solve with its adjoint takes minutes per image at 32x32: no warm-up, ode_repeats runs
    t_ode, _ = median_time(ode, ode_repeats, warmup=False)
    t_e1, _ = median_time(elbo_fn(1), repeats)
    t_e8, _ = median_time(elbo_fn(8), repeats)
    size = prior.image_shape[-1]
    return {
        f"ode_logp_grad_s_per_image_{size}": t_ode / batch, f"ode_nfe_forward_{size}": nfe["forward"],
        f"ode_nfe_total_{size}": nfe["total"], f"elbo_grad_s_per_image_{size}": t_e1 / batch,
        f"elbo8_grad_s_per_image_{size}": t_e8 / batch, f"elbo_vs_ode_speedup_{size}": t_ode / t_e1,
        f"elbo8_vs_ode_speedup_{size}": t_ode / t_e8, f"prior_{size}": name,
    }


def bench_training(repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "bh.h5"
        write_dataset(data, make_dataset("blackholes", 256, 32, seed=0))
        cfg = TrainConfig(data=str(data), out=str(Path(tmp) / "run"), steps=10**9, batch_size=32, width=32,
                          sample_every=0, ckpt_every=10**9)
        trainer = Trainer(cfg, progress=False)
        steps = 5
        t, _ = median_time(lambda: [trainer.train_step() for _ in range(steps)], repeats)
    return {"train_steps_per_s": steps / t, "train_batch": 32, "train_npix": 32}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the figures as JSON")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ode-repeats", type=int, default=1, help="runs of the (slow) ODE log p, no warm-up")
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    res = {"torch_threads": torch.get_num_threads(), "machine": platform.machine(), "repeats": args.repeats,
           "ode_repeats": args.ode_repeats, "batch": args.batch}
    names = [n for n in ("faces16", "bh32") if n in shipped_priors()]
    for name in names:
        res.update(bench_logp(name, args.batch, args.repeats, args.ode_repeats))
    res.update(bench_training(args.repeats))
    main_size = 32 if "bh32" in names else 16
    for key in ("ode_logp_grad_s_per_image", "elbo_grad_s_per_image", "elbo_vs_ode_speedup"):
        res[key] = res.get(f"{key}_{main_size}")
    print(f"{'size':>5s} {'ODE logp+grad s/img':>20s} {'NFE fwd/total':>14s} {'ELBO(1) s/img':>14s} "
          f"{'ELBO(8) s/img':>14s} {'speedup 1/8':>14s} {'goal':>6s}")
    for name in names:
        s = 16 if name.startswith("faces") else int(name[2:])
        print(f"{s:5d} {res[f'ode_logp_grad_s_per_image_{s}']:20.3f} "
              f"{res[f'ode_nfe_forward_{s}']:6d}/{res[f'ode_nfe_total_{s}']:<7d} "
              f"{res[f'elbo_grad_s_per_image_{s}']:14.5f} {res[f'elbo8_grad_s_per_image_{s}']:14.5f} "
              f"{res[f'elbo_vs_ode_speedup_{s}']:6.0f}x/{res[f'elbo8_vs_ode_speedup_{s}']:<5.0f}x {100:5d}x")
    print(f"training (bh32 recipe: batch 32, 32x32, width 32): {res['train_steps_per_s']:.2f} steps/s")
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
