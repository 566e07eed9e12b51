"""Every inference method against exact Gaussian posteriors (denoising, deblurring, random inpainting).

    python scripts/validate_samplers.py --json OUT.json [--prior analytic|trained|both] [--samples 2048]
        [--tasks denoise,deblur,random_inpaint] [--methods dpi,dps,ald,sdedit,pnp_admm,map] [--sweeps]
        [--opt METHOD:NAME=VALUE ...] [--threads N]

Prior: the 16x16 face-fitted Gaussian (posterior.validation_baselines). ``analytic``: the score-based
methods (DPS, ALD, SDEdit, PnP-ADMM) use its exact diffused score, DPI and MAP its closed-form
log-density; ``trained``: every method uses the shipped ``faces16`` score prior trained on draws of
that Gaussian (DPI and MAP through its ELBO). Every method runs with its default settings (one set for
all tasks, not tuned to the closed form), except DPI's flow: a dense Glow (4 blocks, 128 units, 2000
steps of 64 draws), which can represent any Gaussian; ``--opt`` overrides a setting of one method
(recorded in the JSON's ``settings``); ``--sweeps`` adds, for the analytic prior, DPS's step size
``zeta``, ALD's ``gamma`` and SDEdit's ``t0`` over 8 log-spaced values each.

JSON: ``{"analytic": {task: {method: {mean_rel_err, std_rel_err, kl, kl_exact_draws, seconds, ...}}},
"trained": {...}, "sweeps": {task: {method: [{value, ...}]}}, "settings": {...}}``; ``kl`` is the Gaussian
KL of the samples' mean and covariance against the exact posterior (None for point estimates) and
``kl_exact_draws`` the same for as many exact draws (finite-sample floor). Writes a PNG per prior
(mean and std error per method and task).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from interfero.errors import InterferoError
from interfero.plotting import plt, save_figure
from posterior.cli import parse_options
from posterior.methods import run_method
from posterior.report import write_json
from posterior.validation_baselines import TASKS, compare, exact_problem

METHODS = ("dpi", "dps", "ald", "sdedit", "pnp_admm", "map")
SWEEPS = {"dps": ("zeta", np.logspace(-2, 1, 8)), "ald": ("gamma", np.logspace(-1.5, 0.5, 8)),
          "sdedit": ("t0", np.logspace(-2, 0, 8))}


def priors(kind: str):
    """(score prior for the sampling methods, prior for DPI and MAP, the Gaussian) of ``kind``."""
    from priors.datasets.faces import face_gaussian
    from priors.score_prior import ScorePrior
    from priors.sde import VPSDE

    gauss = face_gaussian(16)
    if kind == "analytic":
        sde = VPSDE()
        return ScorePrior(gauss.diffused(sde), sde, gauss.image_shape, name="face-gaussian-score"), gauss, gauss
    from priors.pretrained import load_prior

    p = load_prior("faces16", expect_image_size=16, elbo={"draws": 8, "importance": True})
    return p, p, gauss


def options(method: str, samples: int, batch: int) -> dict:
    if method in ("dps", "ald", "sdedit"):
        return {"n_samples": samples, "batch": batch}
    if method == "dpi":  # a dense Glow can represent any Gaussian posterior exactly (DPIMethodConfig)
        return {"n_samples": samples, "flow": "glow", "layout": "dense", "blocks": 4, "hidden": 128, "steps": 2000,
                "batch": 64}
    return {}


def run(kind: str, tasks, methods, samples: int, batch: int, progress: bool, overrides: dict) -> dict:
    score_prior, density_prior, gauss = priors(kind)
    out: dict = {}
    for task in tasks:
        out[task] = {}
        for method in methods:
            prior = density_prior if method in ("dpi", "map") else score_prior
            ex = exact_problem(task, prior, gauss)
            name = method.replace("_", "-")
            t0 = time.perf_counter()
            opts = options(name, samples, batch) | overrides.get(method, {})
            post = run_method(name, ex.problem, opts, progress=progress)
            res = compare(post, ex) | {"seconds": time.perf_counter() - t0}
            out[task][method] = res
            print(f"{kind:>8} {task:>15} {method:>9}: mean err {res['mean_rel_err']:.4f}, std err"
                  f" {res['std_rel_err']:.4f}, KL {res['kl'] if res['kl'] is None else round(res['kl'], 2)}"
                  f" ({res['seconds']:.1f} s)", flush=True)
    return out


def sweeps(tasks, samples: int, batch: int) -> dict:
    score_prior, _, gauss = priors("analytic")
    out: dict = {}
    for task in tasks:
        ex = exact_problem(task, score_prior, gauss)
        out[task] = {}
        for method, (key, values) in SWEEPS.items():
            rows = []
            for v in values:
                try:
                    post = run_method(method, ex.problem, options(method, samples, batch) | {key: float(v)})
                    rows.append({key: float(v)} | compare(post, ex))
                except InterferoError as err:  # e.g. a step size that diverges: report it
                    rows.append({key: float(v), "error": str(err)})
                got = rows[-1].get("mean_rel_err", rows[-1].get("error"))
                print(f"sweep {task:>15} {method:>7} {key}={v:.3g}: {got}", flush=True)
            out[task][method] = rows
    return out


def plot(res: dict, path: Path, title: str) -> None:
    tasks = list(res)
    methods = list(res[tasks[0]])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    w = 0.8 / len(tasks)
    for j, key in enumerate(("mean_rel_err", "std_rel_err")):
        ax = axes[j]
        for i, task in enumerate(tasks):
            ax.bar(np.arange(len(methods)) + i * w, [res[task][m][key] for m in methods], w, label=task)
        ax.set_xticks(np.arange(len(methods)) + 0.4 - w / 2, methods)
        ax.set_yscale("log")
        ax.axhline(0.05 if key == "mean_rel_err" else 0.10, color="k", ls="--", lw=0.8)
        ax.set_title(f"{key} (median over pixels; dashed: goal)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--prior", choices=("analytic", "trained", "both"), default="both")
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=512, help="independent runs per batch of the sampling methods")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--sweeps", action="store_true", help="hyperparameter sweeps (analytic prior)")
    ap.add_argument("--sweep-samples", type=int, default=512)
    ap.add_argument("--opt", action="append", default=[], metavar="METHOD:NAME=VALUE")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default="outputs/validate_samplers")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [t for t in args.tasks.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    for t in tasks:
        if t not in TASKS:
            raise InterferoError(f"unknown task {t!r} (choose from {', '.join(TASKS)})")
    for m in methods:
        if m not in METHODS:
            raise InterferoError(f"unknown method {m!r} (choose from {', '.join(METHODS)})")
    overrides: dict[str, dict] = {}
    for item in args.opt:
        method, sep, setting = item.partition(":")
        if not sep or method not in METHODS:
            raise InterferoError(f"--opt expects METHOD:NAME=VALUE with a method of {', '.join(METHODS)}, got {item!r}")
        overrides.setdefault(method, {}).update(parse_options([setting]))
    kinds = ("analytic", "trained") if args.prior == "both" else (args.prior,)
    result: dict = {"settings": {"samples": args.samples, "tasks": tasks, "methods": methods, "overrides": overrides,
                                 "noise_std": {t: TASKS[t][1] for t in tasks}}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        result[kind] = run(kind, tasks, methods, args.samples, args.batch, progress=False, overrides=overrides)
        write_json(result, args.json)
        plot(result[kind], out / f"validate_samplers_{kind}.png", f"methods against the exact posterior ({kind} prior)")
    if args.sweeps:
        result["sweeps"] = sweeps(tasks, args.sweep_samples, args.batch)
        write_json(result, args.json)


if __name__ == "__main__":
    from interfero.errors import run_script

    run_script(main, "validate_samplers")
