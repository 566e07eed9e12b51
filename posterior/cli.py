"""The ``interfero`` command: every layer's subcommands in one parser.

Errors a user can cause (:class:`interfero.errors.InterferoError`) print one
line on stderr and exit with status 2; nothing else is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from interfero import cli as interfero_cli
from interfero.errors import InterferoError
from interfero.validation import check_output_file, count, nonnegative, positive, seed, write_output_text
from priors import cli as priors_cli

from . import reconstruct as rec
from .array_study import STUDY_FLOW_BASE, STUDY_STEPS
from .flows import BASES
from .methods import METHODS


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit status 2 (``--help`` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="interfero", description="Bayesian black-hole imaging toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    interfero_cli.add_subcommands(sub)
    priors_cli.add_subcommands(sub)
    add_subcommands(sub)
    return parser


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    d = rec.ReconstructSettings()
    p = sub.add_parser("reconstruct", help="posterior image with uncertainty from a uvfits file (DPI)")
    p.add_argument("obs", nargs="+", help="observation (uvfits); several files (days, bands) of one source give one"
                                          " posterior")
    p.add_argument("--combine-frequencies", action="store_true",
                   help="allow combining files at different frequencies (e.g. the EHT's 227 and 229 GHz bands)")
    p.add_argument("--prior", default=d.prior,
                   help="shipped prior (default = bh32lnflux; bh32disk, bh32), a prior file stem, or a classical"
                        " regulariser: tv, mem, tv+mem (flux-normalised; MEM against the starting blob)")
    p.add_argument("--method", default=d.method, choices=tuple(METHODS),
                   help="inference method: dpi (default; normalizing-flow posterior) or a baseline: dps, ald, sdedit,"
                        " pnp-dm (samples), pnp-admm, map (point estimates); see docs/methods.md")
    p.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting of the --method baseline (repeatable), e.g. --opt zeta=0.5 --opt steps=500")
    p.add_argument("--prior-method", default=d.prior_method, choices=("elbo", "ode", "score"),
                   help="of a score prior: ELBO surrogate (fast), exact probability-flow ODE log p, or the score at"
                        " eps alone (the gradient only: fastest, reverse KL only)")
    p.add_argument("--reg-weight", type=positive(), default=d.reg_weight,
                   help="weight (nats) of --prior tv|mem|tv+mem: log p = -w TV(x)/F + w S(x)/F")
    p.add_argument("--elbo-draws", type=count(), default=d.elbo_draws, help="time/noise draws of the ELBO")
    p.add_argument("--data", default=",".join(d.products), help="data products: cphase,logcamp[,amp,vis]")
    p.add_argument("--npix", type=count(), default=d.npix, help="image size in pixels")
    p.add_argument("--fov", type=positive(), default=d.fov_uas, help="field of view in microarcseconds")
    p.add_argument("--flux", type=positive(),
                   help="compact total flux in Jy (default: the zero-baseline amplitude); the intra-site baselines"
                        " are rescaled to it, as the EHT does for M87's extended jet")
    p.add_argument("--flux-sigma", type=positive(), default=d.flux_sigma_frac,
                   help="width of the total-flux term as a fraction of the flux")
    p.add_argument("--sys-noise", default=d.sys_noise, metavar="auto|FRACTION",
                   help="fractional systematic noise added in quadrature to visibility sigmas (e.g. 0.01); auto"
                        " (default): 0.02 for real correlator output (several integrations per scan), else 0")
    p.add_argument("--avg", default=d.avg, metavar="auto|scan|none|SECONDS",
                   help="coherent time averaging before imaging: auto (default: per scan when the file has several"
                        " integrations per baseline and scan, as real correlator output does), scan, none, or an"
                        " interval in seconds")
    p.add_argument("--steps", type=count(), default=d.steps, help="DPI optimisation steps (of each --ensemble fit)")
    p.add_argument("--batch", type=count(), default=d.batch, help="flow samples per step")
    p.add_argument("--lr", type=positive(), default=d.lr, help="Adam step size")
    p.add_argument("--samples", type=count(2), default=d.samples, help="posterior samples written out")
    p.add_argument("--flow", default=d.flow_kind, choices=("realnvp", "glow"), help="flow architecture")
    p.add_argument("--blocks", type=count(), default=d.flow_blocks, help="coupling blocks of the flow")
    p.add_argument("--flow-hidden", type=count(), default=d.flow_hidden,
                   help="hidden channels (conv layout) or units (dense layout) of each coupling net")
    p.add_argument("--flow-layout", default=d.flow_layout, choices=("auto", "conv", "dense"),
                   help="couplings over squeezed images with 3x3 convolutions (conv; auto picks it for images) or"
                        " over the flattened image with MLPs (dense: every pixel sees every other)")
    p.add_argument("--flow-output", default=None, choices=("softplus", "exp", "none"),
                   help="output transform of the flow: none (default for score priors; pixels may dip below"
                        " zero, as the prior's own noise level allows), softplus (default for tv/mem/tv+mem) or exp"
                        " (non-negative images)")
    p.add_argument("--warm-start", type=nonnegative(int), default=d.warm_start_steps, metavar="STEPS",
                   help="with --warm-start-kind flow, steps of a non-negative (softplus) fit whose posterior mean"
                        " starts the final flow (default: min(50, --steps) with --flow-output none, else 0 = no warm"
                        " start: the flow starts from the blob)")
    p.add_argument("--warm-start-kind", default=d.warm_start, choices=rec.WARM_STARTS,
                   help="what starts the final flow when there is a warm start: map (the MAP image, blurred by"
                        f" {rec.MAP_BLUR_UAS:g} uas), flow (a short softplus fit from the blob) or prior (the same"
                        " fit from a draw of the score prior, each ensemble fit its own)")
    p.add_argument("--flow-base", default=d.flow_base, choices=rec.FLOW_BASES,
                   help="diagonal: the flow (independent base pixels) is the posterior; laplace: after that fit, a"
                        " final flow whose base is correlated as the data's Hessian at its mean says, with the"
                        " prior's jitter elsewhere (flows with --flow-output none)")
    p.add_argument("--flow-basis", default=d.flow_basis, choices=BASES,
                   help="what the diagonal flow's base and layers act on: pixel, or dct (orthonormal 2-D DCT"
                        " coefficients: spatial frequencies, which Fourier-plane data fix or leave to the prior)")
    p.add_argument("--laplace-start", default=d.laplace_start, choices=rec.LAPLACE_STARTS,
                   help="with --ensemble K and --flow-base laplace: pooled (every Laplace-based flow starts at the K"
                        " diagonal fits' aligned mean) or own (each at its own fit's mean)")
    p.add_argument("--laplace-steps", type=nonnegative(int), default=None,
                   help=f"steps of the Laplace-based final flow (0 = none; default: min({rec.LAPLACE_STEPS}, --steps))")
    p.add_argument("--coupling-scale", default=d.flow_coupling, choices=("sigmoid", "exp"),
                   help="scale map of the flow's couplings: sigmoid (bounded, contracting) or exp (RealNVP's,"
                        " unbounded)")
    p.add_argument("--alpha", type=nonnegative(), default=d.alpha,
                   help="Renyi order of the flow's objective: 1 = reverse KL (default), below 1 weights the samples"
                        " where the flow is too narrow more (0 = the importance-weighted bound)")
    p.add_argument("--ensemble", type=count(), default=None, metavar="K",
                   help="fit K flows with seeds SEED, SEED+1, ... and pool their samples, with mean, std and intervals"
                        f" combined by Rubin's rules (default {rec.ENSEMBLE} for --method dpi; K times the time of"
                        " one): one flow settles on one of the images the data allow, its intervals far too narrow")
    p.add_argument("--anneal", type=nonnegative(int), default=0,
                   help="steps of linear data-weight annealing of the first fit (0 = off)")
    p.add_argument("--seed", type=seed, default=d.seed)
    p.add_argument("--threads", type=count(), help="torch CPU threads")
    p.add_argument("--device", default=d.device,
                   help="where the DPI fits' steps run: cpu (default), cuda or cuda:N (a GPU; the samples differ"
                        " from a CPU run's by their random draws, not in law)")
    p.add_argument("--max-chi2", type=positive(), default=d.max_chi2,
                   help="refuse (write nothing but checkpoints) a fit whose reduced chi^2 on any data product is"
                        " above this")
    p.add_argument("--allow-fov-mismatch", action="store_true", help="use a prior trained on another field of view")
    p.add_argument("--truth", help="true image (FITS) for nxcorr / PSNR / SSIM")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's results and checkpoints in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_reconstruct)

    from .restore import TASKS, RestoreSettings

    r = RestoreSettings()
    q = sub.add_parser("restore", help="denoise / deblur / inpaint an image with the score prior (any --method)")
    q.add_argument("image", help="the degraded image (FITS in Jy/pixel, NPY, or PNG); with --simulate a clean one")
    q.add_argument("--task", default=r.task, choices=TASKS, help="the degradation to undo")
    q.add_argument("--noise", help="Gaussian noise std: a percentage of the image's peak (e.g. 5%%) or a number in"
                                   " image units (default: 10%% for denoise, 2%% otherwise); with --noise-kind"
                                   " poisson the counts per unit intensity (default 1000)")
    q.add_argument("--noise-kind", default=r.noise_kind, choices=("gaussian", "poisson"))
    q.add_argument("--blur", type=positive(), default=r.blur_px, help="deblur: Gaussian blur std in pixels")
    q.add_argument("--box", type=positive(), default=r.box_frac,
                   help="box-inpaint: side of the hidden centred box as a fraction of the image side")
    q.add_argument("--missing", type=positive(), default=r.missing,
                   help="random-inpaint: fraction of the pixels hidden")
    q.add_argument("--method", default=r.method, choices=tuple(METHODS), help="inference method (docs/methods.md)")
    q.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE", help="a setting of the method")
    q.add_argument("--prior", default=r.prior, help="shipped prior name or prior file stem")
    q.add_argument("--truth", help="the clean image, to score the restoration (PSNR, SSIM, nxcorr, coverage)")
    q.add_argument("--simulate", action="store_true",
                   help="IMAGE is clean: degrade it with the task's operator and noise (seeded), restore, score")
    q.add_argument("--seed", type=seed, default=r.seed)
    q.add_argument("--threads", type=count(), help="torch CPU threads")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in --out")
    q.set_defaults(func=_restore)

    a = sub.add_parser("array-study", help="simulate and reconstruct one truth with several arrays; compare them")
    a.add_argument("--truth", required=True, help="truth image (FITS, Jy/pixel), or 'prior' for a draw of --prior")
    a.add_argument("--arrays", required=True,
                   help="comma-separated arrays: EHT2017, EHT2018, ngEHT, edited with +STATION / -STATION"
                        " (EHT2017-JCMT-SMT-APEX), or station-table files")
    a.add_argument("--prior", default=d.prior, help="prior of the reconstructions (and of --truth prior)")
    a.add_argument("--steps", type=count(), default=STUDY_STEPS,
                   help=f"DPI steps per fit (default {STUDY_STEPS}: twice reconstruct's, for the richest arrays)")
    a.add_argument("--samples", type=count(2), default=d.samples, help="posterior samples per reconstruction")
    a.add_argument("--ensemble", type=count(), default=d.ensemble, metavar="K",
                   help="independent DPI fits pooled per reconstruction (as reconstruct --ensemble)")
    a.add_argument("--flow-base", default=STUDY_FLOW_BASE, choices=rec.FLOW_BASES,
                   help=f"base of each fit's last flow, as reconstruct --flow-base (default {STUDY_FLOW_BASE}: the"
                        " posterior's correlations, so that the arrays' std compare)")
    a.add_argument("--laplace-start", default=d.laplace_start, choices=rec.LAPLACE_STARTS,
                   help="where an ensemble's Laplace-based flows start, as reconstruct --laplace-start")
    a.add_argument("--flow-basis", default=d.flow_basis, choices=BASES,
                   help="what each diagonal flow acts on, as reconstruct --flow-basis")
    a.add_argument("--prior-method", default=d.prior_method, choices=("elbo", "ode", "score"),
                   help="the score prior's term in each fit, as reconstruct --prior-method")
    a.add_argument("--seed", type=seed, default=d.seed, help="seed of the thermal noise, the fits (and the draw)")
    a.add_argument("--threads", type=count(), help="torch CPU threads (of each reconstruction)")
    a.add_argument("--device", default=d.device,
                   help="where each reconstruction's DPI fits run, as reconstruct --device (--jobs of them share"
                        " a GPU)")
    a.add_argument("--jobs", type=count(), default=1,
                   help="arrays reconstructed at once, each in its own process (one torch thread each unless"
                        " --threads); the results do not depend on it")
    a.add_argument("--max-chi2", type=positive(), default=d.max_chi2,
                   help="refuse a reconstruction whose reduced chi^2 on any data product is above this")
    a.add_argument("--json", help="also write the comparison JSON here")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.add_argument("--out", required=True, help="output folder")
    a.add_argument("--overwrite", action="store_true", help="replace an earlier study's results in --out")
    a.add_argument("--resume", action="store_true",
                   help="continue an interrupted study in --out from its reconstructions' checkpoints")
    a.set_defaults(func=_array_study)


def parse_options(items: list[str]) -> dict[str, str]:
    """``["name=value", ...]`` (``--opt``) as a dict; a malformed or repeated item is a one-line error."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InterferoError(f"--opt expects NAME=VALUE, got {item!r}")
        if name.strip() in out:
            raise InterferoError(f"--opt {name.strip()} given twice")
        out[name.strip()] = value.strip()
    return out


def _restore(args) -> None:
    from .restore import RestoreSettings, restore

    s = RestoreSettings(task=args.task, noise=args.noise, noise_kind=args.noise_kind, blur_px=args.blur,
                        box_frac=args.box, missing=args.missing, prior=args.prior, method=args.method,
                        method_options=parse_options(args.opt), seed=args.seed, threads=args.threads)
    if args.simulate and args.truth:
        raise InterferoError("--simulate scores the restoration against IMAGE itself; do not also give --truth")
    m = restore(args.image, args.out, s, truth=args.truth, simulate=args.simulate, progress=not args.quiet,
                overwrite=args.overwrite)
    keys = ("psnr", "ssim", "nxcorr", "truth_coverage_95", "runtime_s")
    print(" ".join(f"{k}={m[k]:.4g}" for k in keys if k in m))
    print(f"wrote {args.out}/metrics.json, samples.h5, mean.fits, std.fits, measurement.fits, report.png")


def _array_study(args) -> None:

    from .array_study import array_study, markdown

    if args.json is not None:
        check_output_file(args.json, "--json", create_parent=True)
    arrays = [a.strip() for a in args.arrays.split(",") if a.strip()]
    s = rec.ReconstructSettings(prior=args.prior, steps=args.steps, samples=args.samples, ensemble=args.ensemble,
                                seed=args.seed, threads=args.threads, max_chi2=args.max_chi2,
                                flow_base=args.flow_base, laplace_start=args.laplace_start,
                                flow_basis=args.flow_basis, prior_method=args.prior_method, device=args.device)
    res = array_study(args.truth, arrays, args.out, s, progress=not args.quiet, overwrite=args.overwrite,
                      resume=args.resume, workers=args.jobs)
    if args.json:
        write_output_text(Path(args.json), json.dumps(res, indent=2))
    print(markdown(res["arrays"]), end="")
    print(f"wrote {args.out}/arrays.png, arrays.json, arrays.md and one reconstruction folder per array")


def _reconstruct(args) -> None:
    products = tuple(x.strip() for x in args.data.split(",") if x.strip())
    s = rec.ReconstructSettings(
        prior=args.prior, prior_method=args.prior_method, reg_weight=args.reg_weight, elbo_draws=args.elbo_draws,
        products=products,
        npix=args.npix, fov_uas=args.fov, flux=args.flux, flux_sigma_frac=args.flux_sigma, sys_noise=args.sys_noise,
        avg=args.avg, combine_frequencies=args.combine_frequencies,
        steps=args.steps, batch=args.batch, lr=args.lr, samples=args.samples, flow_kind=args.flow,
        flow_blocks=args.blocks, flow_hidden=args.flow_hidden, flow_layout=args.flow_layout,
        flow_output=args.flow_output, flow_coupling=args.coupling_scale, flow_base=args.flow_base,
        flow_basis=args.flow_basis,
        laplace_steps=args.laplace_steps, laplace_start=args.laplace_start,
        anneal_steps=args.anneal, alpha=args.alpha, ensemble=args.ensemble, warm_start_steps=args.warm_start,
        warm_start=args.warm_start_kind,
        seed=args.seed,
        allow_fov_mismatch=args.allow_fov_mismatch, threads=args.threads, method=args.method, max_chi2=args.max_chi2,
        method_options=parse_options(args.opt), device=args.device,
    )
    obs = args.obs[0] if len(args.obs) == 1 else args.obs
    m = rec.reconstruct(obs, args.out, s, truth=args.truth, resume=args.resume, progress=not args.quiet,
                        overwrite=args.overwrite)
    keys = ("total_flux", "chi2_cphase", "chi2_logcamp", "nxcorr", "nxcorr_blur10", "runtime_s")
    print(" ".join(f"{k}={m[k]:.4g}" for k in keys if k in m))
    print(f"wrote {args.out}/metrics.json, samples.h5, mean.fits, std.fits, report.png")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except InterferoError as err:
        print(f"interfero {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interfero {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
