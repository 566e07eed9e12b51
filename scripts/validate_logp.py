"""Validation of the score-based log p against a known density (paper Figure 2 and 3).

    python scripts/validate_logp.py [--out outputs/validate_logp] [--steps 6000] [--json OUT.json]
    python scripts/validate_logp.py --prior faces16 --divergence hutchinson --probes 16   # the shipped net

1. The ground truth is the face-fitted Gaussian at 16x16 (priors.datasets.faces).
   A U-Net is trained on --n-train (200000) draws from it (skipped when
   OUT/run/prior.json already holds a run of the asked length; --retrain
   forces it), unless --prior names a trained one.
2. On 128 fresh draws (in distribution) and 128 natural-image patches (out of
   distribution): the exact PF-ODE log p of the trained model against the
   true Gaussian log-density: R^2 (squared Pearson correlation, the paper's
   figure) and R^2 about the identity line. The divergence is the exact
   trace, or Hutchinson (Rademacher probes) with a control variate: the
   Gaussian fitted to the --n-train *training draws* (not the truth), whose
   divergence is known in closed form (priors.ode); unbiased either way.
   With >= 2 probes the probes' spread gives each estimate's standard error
   (priors.ode), reported as probe_sd_*_nats, and the R^2 with that noise
   taken out (r2_*_without_probe_noise): what the model's log p itself
   scores, which the exact trace measures directly.
   The ceiling a finite training set sets: the same R^2 for the Gaussian
   fitted (maximum likelihood) to the training draws, the best any model of
   those draws can be expected to do (with 20000 draws of 256 pixels it is
   ~0.985-0.99 in distribution, below the goal >= 0.99; hence 200000 by
   default, whose ceiling is ~0.998; the draws are written once, ~200 MB).
   Also the score-matching KL bound (priors.score_error) of the network
   against the true diffused score: what a network must bring down for an
   exact log p to be right (OUT/score_error.png shows it per t), and how it
   is off: the score's gain on the true one per t in the 157 floor and 99
   other eigen-directions of the covariance (score_gain, priors.score_error
   .subspace_gain), with the log p residual variance before and after the
   per-image chi^2 in those subspaces are added to the affine fit.
3. The gradient of the ODE log p (adjoint, at --rtol) against the network
   score at t = eps on --n-grad images: cosine distance 1 - cos per image
   (median reported). The adjoint solve costs minutes per image.
Writes OUT/logp_in.png, OUT/logp_ood.png, OUT/grad_vs_score.png, a JSON of figures and
OUT/logp.npz (per-image model and true log p).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from interfero.errors import InterferoError
from interfero.io import atomic_path, atomic_write_text
from interfero.plotting import save_figure
from priors.classical import GaussianPrior
from priors.datasets import make_dataset
from priors.datasets.faces import face_gaussian
from priors.datasets.patches import natural_patches
from priors.datasets.store import load_dataset, write_dataset
from priors.networks import GaussianScore
from priors.pretrained import load_prior, prior_path
from priors.score_error import score_error_bound, subspace_gain
from priors.train import TrainConfig, train


def r2_scores(model: np.ndarray, truth: np.ndarray, noise_var: np.ndarray | None = None) -> tuple[float, float]:
    """R^2 (squared Pearson correlation) and R^2 about the identity line of ``model`` against ``truth``.

    ``noise_var``: per-image variance of an estimator noise in ``model`` that is independent of the
    truth (the Hutchinson probes' squared standard error, nats^2). It is taken out of ``model``'s
    variance and of the squared errors, giving the figures the model's log p itself would score
    (the usual correction for attenuation; NaN where the noise exceeds the observed spread).
    """
    noise = 0.0 if noise_var is None else float(np.mean(noise_var))
    centred = truth - truth.mean()
    var_model = float(np.var(model)) - noise
    cov = float(np.mean((model - model.mean()) * centred))
    corr = cov**2 / (var_model * float(np.var(truth))) if var_model > 0 else float("nan")
    identity = 1 - (float(np.sum((model - truth) ** 2)) - noise * len(model)) / float(np.sum(centred**2))
    return corr, identity


def model_logp(prior, x: torch.Tensor, batch: int, divergence: str, probes: int, rtol: float,
               control=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-image ODE log p, and the Hutchinson standard error of each (None: exact trace or one probe)."""
    prior.method = "ode"
    prior.ode_kwargs = {"divergence": divergence, "probes": probes, "probe": "rademacher", "gradient": "none",
                        "rtol": rtol, "atol": rtol, "chunk": 64, "control": control}
    out, sem = [], []
    for i in range(0, len(x), batch):
        out.append(prior.log_prob(x[i : i + batch], generator=torch.Generator().manual_seed(i)).detach())
        sem.append(prior.last_probe_sem)
    sem_all = None if any(s is None for s in sem) else torch.cat(sem).double().numpy()
    return torch.cat(out).double().numpy(), sem_all


def subspace_residuals(model: np.ndarray, truth: np.ndarray, x: torch.Tensor, gauss: GaussianPrior,
                       masks: list[torch.Tensor]) -> dict[str, float]:
    """Variance (nats^2) of the model log p left after the affine fit on the true one, and after adding each
    image's chi^2 over every eigen-direction subset in ``masks`` (boolean over ``gauss.lam``) as regressors:
    the part of the residual a per-subspace precision error of the model explains."""
    r = x.double().reshape(x.shape[0], -1) - gauss.mean.reshape(1, -1)
    y2 = (r @ gauss.vecs).pow(2) / gauss.lam  # per-direction chi^2_1
    affine = np.c_[np.ones_like(truth), truth]
    both = np.c_[affine, np.stack([y2[:, m].sum(-1).numpy() for m in masks], 1)]
    left = [float(np.var(model - a @ np.linalg.lstsq(a, model, rcond=None)[0])) for a in (affine, both)]
    return {"residual_var_in_nats2": left[0], "residual_var_in_after_subspace_chi2_nats2": left[1]}


def scatter(model, truth, title, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(truth, model, s=8)
    lo, hi = min(truth.min(), model.min()), max(truth.max(), model.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="identity")
    ax.set_xlabel("true log p (nats)")
    ax.set_ylabel("score-based log p (PF-ODE, nats)")
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/validate_logp")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--global-rank", type=int, default=256,
                    help="rank of the U-Net's global linear branch (priors.networks.GlobalLinear; 0: none;"
                    " 256, full rank at 16x16, halved the score-error bound at equal cost)")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=200000,
                    help="training draws from the face-Gaussian (20000 cap R^2 at ~0.985-0.99)")
    ap.add_argument("--n-grad", type=int, default=32, help="images for the gradient check (minutes each)")
    ap.add_argument("--divergence", choices=("exact", "hutchinson"), default="exact")
    ap.add_argument("--probes", type=int, default=16)
    ap.add_argument("--control", choices=("gaussian", "none"), default="gaussian",
                    help="Hutchinson control variate: the Gaussian fitted to the training draws")
    ap.add_argument("--prior", help="evaluate this trained faces prior (name or path) instead of training one")
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--json", help="write the figures here as well")
    args = ap.parse_args()
    if args.n_train <= 16 * 16:
        raise InterferoError(f"--n-train must exceed the 256 pixels (the Gaussian fitted to the training draws"
                             f" needs a full-rank covariance), got {args.n_train}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    run = out / "run"
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"faces16-{args.n_train}.h5"
    if not data.is_file():
        write_dataset(data, make_dataset("face-gaussian", args.n_train, 16, seed=0))
    if args.prior:
        done = prior_path(args.prior).with_suffix(".json")
    else:
        done = run / "prior.json"
        record = json.loads(done.read_text())["training"] if done.is_file() else None
        # another network or other draws: train anew (a checkpoint of that run cannot be resumed)
        other_run = record is not None and (record["config"].get("global_rank", 0) != args.global_rank
                                            or record["config"].get("width") != args.width
                                            or record["data"].get("n_images") != args.n_train)
        if args.retrain or record is None or other_run or record["steps"] != args.steps:
            cfg = TrainConfig(data=str(data), out=str(run), steps=args.steps, batch_size=args.batch_size, lr=1e-3,
                              warmup=200, width=args.width, augment=False, ckpt_every=500, sample_every=2000,
                              global_rank=args.global_rank)
            train(cfg, resume=(run / "checkpoint.json").is_file() and not (args.retrain or other_run))
    prior = load_prior(str(done.with_suffix("")))
    train_x = torch.from_numpy(load_dataset(data)["images"])
    control = None
    if args.divergence == "hutchinson" and args.control == "gaussian":
        control = GaussianScore.fit(prior.to_z(train_x), prior.sde)
    gauss = face_gaussian(16)
    x_in = gauss.sample(args.n, generator=torch.Generator().manual_seed(123)).float()
    x_ood = torch.from_numpy(natural_patches(args.n, 16, seed=1))
    t0 = time.perf_counter()
    lp_in, sem_in = model_logp(prior, x_in, 32, args.divergence, args.probes, args.rtol, control)
    lp_ood, sem_ood = model_logp(prior, x_ood, 32, args.divergence, args.probes, args.rtol, control)
    t_logp = time.perf_counter() - t0
    true_in = gauss.log_prob(x_in.double()).numpy()
    true_ood = gauss.log_prob(x_ood.double()).numpy()
    r2_in, r2_id_in = r2_scores(lp_in, true_in)
    r2_ood, r2_id_ood = r2_scores(lp_ood, true_ood)
    # the same without the Hutchinson noise (its per-image variance is known from the probes' spread)
    quiet = {}
    if sem_in is not None:
        quiet_in, quiet_id_in = r2_scores(lp_in, true_in, sem_in**2)
        quiet = {"probe_sd_in_nats": float(np.sqrt(np.mean(sem_in**2))),
                 "probe_sd_ood_nats": float(np.sqrt(np.mean(sem_ood**2))),
                 "r2_in_without_probe_noise": quiet_in, "r2_identity_in_without_probe_noise": quiet_id_in,
                 "r2_ood_without_probe_noise": r2_scores(lp_ood, true_ood, sem_ood**2)[0]}
    # the ceiling of the training set: the maximum-likelihood Gaussian of the training draws
    flat = train_x.double().reshape(train_x.shape[0], -1)
    fitted = GaussianPrior(flat.mean(0).reshape(train_x.shape[1:]), torch.cov(flat.T, correction=0))
    r2_fit_in = r2_scores(fitted.log_prob(x_in.double()).numpy(), true_in)[0]
    r2_fit_ood = r2_scores(fitted.log_prob(x_ood.double()).numpy(), true_ood)[0]

    # gradient of the ODE log p (adjoint, Hutchinson) vs the network score at t = eps (--n-grad 0: skipped)
    ng = min(args.n_grad, args.n)
    cos = cos_true = np.full(0, np.nan)
    if ng:
        prior.ode_kwargs = {"divergence": "hutchinson", "probes": 1, "probe": "rademacher", "control": control,
                            "gradient": "adjoint", "rtol": args.rtol, "atol": args.rtol}
        xg = x_in[:ng].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(prior.log_prob(xg, generator=torch.Generator().manual_seed(7)).sum(), xg)
        score = prior.score(x_in[:ng])
        cos = torch.nn.functional.cosine_similarity(grad.reshape(ng, -1), score.reshape(ng, -1)).numpy()
        cos_true = torch.nn.functional.cosine_similarity(
            grad.reshape(ng, -1).double(), gauss.score(x_in[:ng].double()).reshape(ng, -1)).numpy()

    scatter(lp_in, true_in, f"in distribution: R$^2$ = {r2_in:.4f}", out / "logp_in.png")
    scatter(lp_ood, true_ood, f"out of distribution: R$^2$ = {r2_ood:.4f}", out / "logp_ood.png")
    import matplotlib.pyplot as plt

    if ng:
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        ax.hist(1 - cos, bins=20)
        ax.set_xlabel("1 - cos(ODE gradient, network score at t = eps)")
        ax.set_ylabel("images")
        save_figure(fig, out / "grad_vs_score.png")
    # where the network's score is off: the score-matching KL bound against the true diffused score
    true_z = gauss.standardised(prior.shift, prior.scale).diffused(prior.sde)
    bound, ts, per_t = score_error_bound(prior.score_model, true_z, prior.sde, prior.to_z(x_in),
                                         generator=torch.Generator().manual_seed(11))
    # how it is off: the score's gain in the 157 floor directions (eigenvalue = the floor) and the 99 others,
    # and how much of the log p residual the per-image chi^2 in those two subspaces explains
    floor = gauss.lam <= gauss.lam.min() * (1 + 1e-6)
    bases = {"floor": gauss.vecs[:, floor], "top": gauss.vecs[:, ~floor]}
    gains = subspace_gain(prior.score_model, true_z, prior.sde, prior.to_z(x_in), bases, ts[::2],
                          generator=torch.Generator().manual_seed(12))
    resid = subspace_residuals(lp_in, true_in, x_in, gauss, [floor, ~floor])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax.loglog(ts, per_t)
    ax.set_xlabel("diffusion time t")
    ax.set_ylabel("0.5 g^2 E|s_theta - s*|^2 (nats per unit t)")
    ax.set_title(f"score-error KL bound {float(bound.mean()):.1f} nats")
    for name in bases:
        bx.semilogx(gains["t"], gains[f"{name}_gain"], marker="o", label=f"{name} ({int(bases[name].shape[1])} dims)")
    bx.axhline(1.0, color="k", lw=0.5)
    bx.set_xlabel("diffusion time t")
    bx.set_ylabel("gain <s_theta, s*> / |s*|^2")
    bx.legend()
    save_figure(fig, out / "score_error.png")
    figures = {
        "r2_in": r2_in, "r2_ood": r2_ood, "r2_identity_in": r2_id_in, "r2_identity_ood": r2_id_ood,
        "r2_in_fitted_gaussian": r2_fit_in, "r2_ood_fitted_gaussian": r2_fit_ood,
        "n_train": int(train_x.shape[0]),
        "median_abs_err_in_nats": float(np.median(np.abs(lp_in - true_in))),
        "median_cos_dist_grad_vs_score": float(np.median(1 - cos)) if ng else None,
        "median_cos_dist_grad_vs_true_score": float(np.median(1 - cos_true)) if ng else None,
        "n": args.n, "n_grad": ng, "train_steps": json.loads(done.read_text())["training"]["steps"],
        "prior": str(done.with_suffix("")), "control_variate": control is not None,
        "divergence": args.divergence, "probes": args.probes if args.divergence == "hutchinson" else None,
        "rtol": args.rtol, "logp_seconds": t_logp, "pixels": 256,
        "score_error_bound_nats": float(bound.mean()), "score_error_bound_sd_nats": float(bound.std()),
        "score_gain": {k: v.tolist() for k, v in gains.items()}, **resid,
    } | quiet
    text = json.dumps(figures, indent=2)
    atomic_write_text(out / "figures.json", text)
    with atomic_path(out / "logp.npz") as tmp:  # per-image values, for comparisons between runs
        extra = {} if sem_in is None else {"probe_sem_in": sem_in, "probe_sem_ood": sem_ood}
        np.savez(tmp, model_in=lp_in, true_in=true_in, model_ood=lp_ood, true_ood=true_ood, **extra)
    if args.json:
        atomic_write_text(args.json, text)
    print(text)


if __name__ == "__main__":
    from interfero.errors import run_script

    run_script(main, "validate_logp")
