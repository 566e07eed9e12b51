"""The paper's Figure 4: diffusion baselines against DPI on a 2-D two-mode posterior.

    python scripts/toy2d_baselines.py --json OUT.json [--samples 10000] [--dpi-steps 2500] [--threads N]

Prior and measurement of ``scripts/toy2d_dpi.py`` (posterior.validation.mixture_toy_problem): an equal
mixture of N((-0.5,-0.5), 0.1^2 I) and N((0.5,0.5), 0.1^2 I), one measurement y = a . x + n with
a = (-2, 1.7), sigma = 0.2, y = 0.3; the posterior is a two-component mixture in closed form. The
baselines use the prior's exact diffused score; each runs at 8 log-spaced values of its
hyperparameter (DPS step size ``zeta``, ALD annealed-noise scale ``gamma``, SDEdit ``t0``). DPI is
``toy2d_dpi``'s fit (closed-form prior, annealing, importance-weighted refinement), one line.

KL(estimate || true posterior): the samples' density by a Gaussian kernel density estimate (Scott's
bandwidth), then quadrature on a 301x301 grid over [-1.5, 1.5]^2 (posterior.validation.grid_kl); the
same estimate from exact posterior draws gives the floor that the density estimate alone leaves.
Writes ``toy2d_baselines.png`` (KL against each hyperparameter; sample scatter of each method at its
best value) and the JSON ``{"dpi": {...}, "exact_draws_kl": ..., "<method>": [{"<param>": v, "kl", ...}]}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from interfero.errors import InterferoError
from interfero.plotting import plt, save_figure
from posterior.methods import run_method
from posterior.problem import InverseProblem
from posterior.report import write_json
from posterior.validation import grid_kl, mixture_toy_problem

SWEEPS = {"dps": ("zeta", np.logspace(-2, 1.5, 8)), "ald": ("gamma", np.logspace(-1.5, 1, 8)),
          "sdedit": ("t0", np.logspace(-2, 0, 8))}


def kde_kl(x: np.ndarray, toy) -> float:
    from scipy.stats import gaussian_kde

    kde = gaussian_kde(x.T)
    return grid_kl(lambda pts: kde.logpdf(pts.T), toy.log_posterior)


def exact_draws(toy, n: int, seed: int = 0) -> np.ndarray:
    w, m, c = toy.posterior_components()
    rng = np.random.default_rng(seed)
    k = rng.choice(len(w), size=n, p=w)
    return np.stack([rng.multivariate_normal(m[i], c[i]) for i in k])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--dpi-steps", type=int, default=2500)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default="outputs/toy2d_baselines")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.samples < 1000:
        raise InterferoError(f"--samples must be >= 1000 for a density estimate, got {args.samples}")
    from priors.score_prior import ScorePrior
    from priors.sde import VPSDE

    toy = mixture_toy_problem()
    sde = VPSDE()
    prior = ScorePrior(toy.prior.diffused(sde), sde, (1, 1, 2), name="two-mode mixture score")
    pb = InverseProblem(toy.operator, toy.y, prior)
    res: dict = {"settings": {"samples": args.samples, "dpi_steps": args.dpi_steps},
                 "mass_lower_left_true": toy.mass_lower_left(),
                 "exact_draws_kl": kde_kl(exact_draws(toy, args.samples), toy)}
    draws: dict = {}
    for method, (key, values) in SWEEPS.items():
        rows = []
        for v in values:
            t0 = time.perf_counter()
            try:
                post = run_method(method, pb, {"n_samples": args.samples, "batch": args.samples, key: float(v)})
            except InterferoError as err:
                rows.append({key: float(v), "error": str(err)})
                print(f"{method} {key}={v:.3g}: {err}", flush=True)
                continue
            x = post.samples.reshape(-1, 2)
            rows.append({key: float(v), "kl": kde_kl(x, toy), "mass_lower_left": float((x.sum(1) < 0).mean()),
                         "seconds": time.perf_counter() - t0})
            draws[(method, float(v))] = x
            print(f"{method} {key}={v:.3g}: KL {rows[-1]['kl']:.3f}, lower-left mass"
                  f" {rows[-1]['mass_lower_left']:.3f} ({rows[-1]['seconds']:.1f} s)", flush=True)
        res[method] = rows
        write_json(res, args.json)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from toy2d_dpi import run as dpi_run

    d = dpi_run(prior="exact", steps=args.dpi_steps, n_samples=args.samples, anneal=int(0.9 * args.dpi_steps))
    x_dpi = d.pop("_draw")[0]
    res["dpi"] = {"kl": d["kl"], "kl_kde": kde_kl(x_dpi, toy), "mass_lower_left": d["mass_lower_left_dpi"],
                  "seconds": d["seconds"]}
    print(f"dpi: KL {d['kl']:.3f} (flow density), {res['dpi']['kl_kde']:.3f} (KDE of its samples)", flush=True)
    write_json(res, args.json)

    fig, axes = plt.subplots(1, 5, figsize=(21, 4))
    for method, (key, _) in SWEEPS.items():
        ok = [r for r in res[method] if "kl" in r]
        axes[0].plot([r[key] for r in ok], [r["kl"] for r in ok], "o-", label=f"{method} ({key})")
    axes[0].axhline(res["dpi"]["kl_kde"], color="k", label="DPI")
    axes[0].axhline(res["exact_draws_kl"], color="0.5", ls=":", label="exact draws (KDE floor)")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("hyperparameter")
    axes[0].set_ylabel("KL(estimate || posterior)")
    axes[0].legend(fontsize=7)
    g = np.linspace(-1.5, 1.5, 201)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    dens = np.exp(toy.log_posterior(np.stack([xx.ravel(), yy.ravel()], -1))).reshape(xx.shape)
    panels = [("DPI", x_dpi)]
    for method, (key, _) in SWEEPS.items():
        ok = [r for r in res[method] if "kl" in r]
        if ok:
            best = min(ok, key=lambda r: r["kl"])
            panels.append((f"{method} best {key}={best[key]:.3g} (KL {best['kl']:.2f})", draws[(method, best[key])]))
    for ax, (title, x) in zip(axes[1:], panels):
        ax.contour(xx, yy, dens, levels=8, colors="k", linewidths=0.6)
        ax.scatter(x[:3000, 0], x[:3000, 1], s=1, alpha=0.4)
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.5, 1.5)
        ax.set_title(title, fontsize=9)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    save_figure(fig, Path(args.out) / "toy2d_baselines.png")


if __name__ == "__main__":
    from interfero.errors import run_script

    run_script(main, "toy2d_baselines")
