"""Quality check of a black-hole prior: do its samples look like its training data?

    python scripts/check_prior.py --prior default [--n 512] [--steps 500] [--json OUT.json] [--out DIR]

Draws ``n`` samples from the prior (reverse SDE, ``steps`` Euler-Maruyama
steps on a geometric time grid, then Tweedie denoising) and ``n`` fresh
images from the training distribution (the law its record names,
priors.ood.training_draws, a different seed), measures on both sets, with
the same ring extractor (interfero.features.RingExtractor), the total flux,
ring diameter and ring width, and runs a two-sample Kolmogorov-Smirnov test
on each (the goal: p > 0.01). Negative sample pixels are kept for the flux and
floored at zero for the ring features. Writes DIR/samples.png (a grid of
samples beside training images), DIR/features.png (histograms) and a JSON.

Also (about a minute; alone with ``--denoiser-only``) the denoiser's total-flux
bias per noise level, ``tweedie_flux_bias``: the mean over the training draws
of ``flux(E[x_0 | x_t]) - flux(x_0)`` (Jy, with its standard error), which an
exact score makes zero at every ``t`` (priors.score_error.tweedie_sum_bias).
It shows at which noise levels a network gets the total flux wrong. And the
curvature of the prior's ELBO (reconstruct's log p) along white pixel noise of the
prior's own jitter size, ``elbo_white_curvature``, in units of the jitter's
Gaussian (priors.score_error.white_noise_curvature; 1 for an exact score where
the training images do not vary, below 1 softer), on CURVATURE_IMAGES training
draws, clean and with the jitter added.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import ks_2samp

from interfero.features import RingExtractor
from interfero.io import atomic_write_text
from interfero.plotting import save_figure
from interfero.validation import count
from priors.ood import training_draws
from priors.pretrained import load_prior
from priors.score_error import tweedie_sum_bias, white_noise_curvature

DENOISER_TIMES = (0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7)
CURVATURE_IMAGES, CURVATURE_REPEATS = 8, 16  # training draws; ELBO calls of 8 draws per image and point


def features(images: np.ndarray, fov: float) -> dict[str, np.ndarray]:
    ex = RingExtractor(images.shape[-1], fov)
    flux = images.reshape(len(images), -1).sum(1)
    feats = [ex(np.clip(im[0], 0, None)) for im in images]
    return {"flux": flux, "diameter": np.array([f.diameter for f in feats]),
            "width": np.array([f.width for f in feats])}


def denoiser_flux_bias(prior, images: np.ndarray, seed: int) -> list[dict]:
    """Per t in DENOISER_TIMES: the denoiser's mean total-flux error on ``images`` (Jy), its standard
    error, and the error relative to the images' mean flux."""
    z0 = prior.to_z(torch.from_numpy(images))
    bias, se = tweedie_sum_bias(prior.score_model, prior.sde, z0, DENOISER_TIMES,
                                generator=torch.Generator().manual_seed(seed))
    mean_flux = float(images.reshape(len(images), -1).sum(1).mean())
    return [{"t": t, "bias_jy": b * prior.scale, "se_jy": e * prior.scale, "relative": b * prior.scale / mean_flux}
            for t, b, e in zip(DENOISER_TIMES, bias, se)]


def elbo_white_curvature(prior, images: np.ndarray, seed: int, repeats: int = CURVATURE_REPEATS) -> dict:
    """The ELBO's curvature along white noise of ``prior.eps_std`` per pixel in units of that jitter's own
    (median, min, max over the images), at the clean images and at the images plus a jitter draw."""
    elbo = prior.with_estimator("elbo")
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(images[:CURVATURE_IMAGES]).float()
    res = {"n_images": len(x), "jitter_jy": prior.eps_std, "repeats": repeats}
    for kind in ("clean", "jittered"):
        y = x + prior.eps_std * torch.randn(x.shape, generator=gen) if kind == "jittered" else x
        _, ratio = white_noise_curvature(lambda z, g: elbo.log_prob(z, generator=g), y, prior.eps_std,
                                         repeats=repeats, seed=seed, generator=gen)
        r = ratio.numpy()
        res[kind] = {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max())}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default="default")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--sampler", choices=("sde", "ode"), default="sde")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="outputs/check_prior")
    ap.add_argument("--json")
    ap.add_argument("--curvature-repeats", type=count(), default=CURVATURE_REPEATS,
                    help="ELBO calls (of 8 draws) per image and point of the curvature (its noise falls as 1/sqrt)")
    ap.add_argument("--denoiser-only", action="store_true",
                    help="only the denoiser's flux bias and the ELBO's curvature (about a minute)")
    args = ap.parse_args()
    prior = load_prior(args.prior)
    fov = prior.fov_uas or 160.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = training_draws(prior, args.n, seed=1000 + args.seed)
    bias = denoiser_flux_bias(prior, train, seed=2000 + args.seed)
    for row in bias:
        print(f"t = {row['t']:.2f}: denoiser flux bias {row['bias_jy']:+.4f} +- {row['se_jy']:.4f} Jy "
              f"({row['relative']:+.1%})")
    curvature = elbo_white_curvature(prior, train, seed=3000 + args.seed, repeats=args.curvature_repeats)
    print("ELBO curvature along white noise, in units of the prior's jitter: " + "; ".join(
        f"{k} images {curvature[k]['median']:.2f} ({curvature[k]['min']:.2f}-{curvature[k]['max']:.2f})"
        for k in ("clean", "jittered")))
    if args.denoiser_only:
        text = json.dumps({"prior": prior.name, "n_images": args.n, "tweedie_flux_bias": bias,
                           "elbo_white_curvature": curvature}, indent=2)
        atomic_write_text(out / "denoiser.json", text)
        if args.json:
            atomic_write_text(args.json, text)
        return
    t0 = time.perf_counter()
    samples = prior.sample(args.n, steps=args.steps, generator=torch.Generator().manual_seed(args.seed),
                           progress=True, sampler=args.sampler).numpy()
    t_sample = time.perf_counter() - t0
    fs, ft = features(samples, fov), features(train, fov)
    res = {"prior": prior.name, "training_law": (prior.training_data or {}).get("law", "v1"),
           "n_samples": args.n, "sampler": args.sampler,
           "sampler_steps": args.steps if args.sampler == "sde" else None, "sampling_seconds": t_sample,
           "negative_flux_fraction": float(np.clip(-samples, 0, None).sum() / np.abs(samples).sum())}
    for key in ("flux", "diameter", "width"):
        a, b = fs[key][np.isfinite(fs[key])], ft[key][np.isfinite(ft[key])]
        res[f"ks_p_{key}"] = float(ks_2samp(a, b).pvalue)
        res[f"ks_stat_{key}"] = float(ks_2samp(a, b).statistic)
        res[f"median_{key}_samples"], res[f"median_{key}_train"] = float(np.median(a)), float(np.median(b))
    res["passes"] = all(res[f"ks_p_{k}"] > 0.01 for k in ("flux", "diameter", "width"))
    res["tweedie_flux_bias"] = bias
    res["elbo_white_curvature"] = curvature

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 8, figsize=(12, 6.4))
    for i, ax in enumerate(axes.flat):
        im = samples[i, 0] if i < 16 else train[i - 16, 0]
        ax.imshow(im, cmap="afmhot", vmin=0)
        ax.axis("off")
    axes[0, 0].set_title("prior samples (rows 1-2)", loc="left", fontsize=9)
    axes[2, 0].set_title("training distribution (rows 3-4)", loc="left", fontsize=9)
    save_figure(fig, out / "samples.png")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, unit in zip(axes, ("flux", "diameter", "width"), ("Jy", "uas", "uas")):
        a, b = fs[key][np.isfinite(fs[key])], ft[key][np.isfinite(ft[key])]
        bins = np.histogram_bin_edges(np.concatenate([a, b]), 30)
        ax.hist(b, bins, alpha=0.5, label="training", density=True)
        ax.hist(a, bins, alpha=0.5, label="prior samples", density=True)
        ax.set_xlabel(f"{key} ({unit})")
        ax.set_title(f"KS p = {res[f'ks_p_{key}']:.3g}")
        ax.legend(fontsize=8)
    save_figure(fig, out / "features.png")
    text = json.dumps(res, indent=2)
    atomic_write_text(out / "figures.json", text)
    if args.json:
        atomic_write_text(args.json, text)
    print(text)


if __name__ == "__main__":
    from interfero.errors import run_script

    run_script(main, "check_prior")
