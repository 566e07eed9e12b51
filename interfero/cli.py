"""``interfero simulate`` and ``interfero inspect`` (the forward-model layer's commands).

Each function here only parses, validates and calls the library; the top-level
``interfero`` command (``posterior.cli``) assembles every layer's subcommands.
Everything is validated before anything is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .arrays import load_array
from .errors import InterferoError
from .io import ImageGeometry, atomic_write_text, read_fits_image, read_uvfits, write_fits_image, write_uvfits
from .models import MODELS, render
from .observation import Observation
from .operators.visibility import VisibilityOperator
from .preparation import prepare_observation
from .simulate import simulate
from .uvcoverage import ObservingSetup
from .validation import (
    check_output_file,
    check_output_folder,
    clear_outputs,
    count,
    make_output_folder,
    nonnegative,
    number,
    positive,
    seed,
    write_output_text,
)

SIMULATE_OUTPUTS = ("obs.uvfits", "truth.fits", "uv_coverage.png", "truth.png", "dirty_image.png", "summary.json")
INSPECT_OUTPUTS = ("uv_coverage.png", "dirty_image.png")


def dirty_image(obs: Observation, geom: ImageGeometry) -> np.ndarray:
    """Natural-weighted dirty image of an observation (peak of the dirty beam = 1)."""
    op = VisibilityOperator(obs.u, obs.v, geom, sigma=obs.sigma)
    with torch.no_grad():
        return op.pseudo_inverse(torch.tensor(obs.vis)[None])[0, 0].numpy()


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate an observation of an image or a geometric model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="FITS image (Jy/pixel, ehtim-compatible header)")
    src.add_argument("--model", choices=MODELS, help="built-in geometric model")
    p.add_argument("--array", default="EHT2017", help="EHT2017, EHT2018, ngEHT, or a station table file")
    p.add_argument("--stations", help="comma-separated subset of the array's stations")
    p.add_argument("--npix", type=count(2), default=64, help="model image size in pixels (with --model)")
    p.add_argument("--fov", type=positive(), default=160.0, help="model field of view in uas (with --model)")
    p.add_argument("--flux", type=positive(), default=2.0, help="model total flux in Jy (with --model)")
    p.add_argument("--diameter", type=positive(), default=44.0, help="model ring diameter in uas")
    p.add_argument("--width", type=positive(), default=10.0, help="model ring width (FWHM) in uas")
    p.add_argument("--ra", type=number(float, 0, 24, open_max=True),
                   help="source RA in hours (default: the image header, or Sgr A*)")
    p.add_argument("--dec", type=number(float, -90, 90),
                   help="source Dec in degrees (default: the image header, or Sgr A*)")
    p.add_argument("--rf", type=positive(), default=230e9, help="observing frequency in Hz")
    p.add_argument("--bw", type=positive(), default=4e9, help="bandwidth in Hz")
    p.add_argument("--tstart", type=number(), default=0.0, help="start, hours UTC")
    p.add_argument("--tstop", type=number(), default=24.0, help="stop, hours UTC")
    p.add_argument("--tint", type=positive(), default=60.0, help="integration time in s")
    p.add_argument("--tadv", type=positive(), default=600.0, help="scan cadence in s")
    p.add_argument("--mjd", type=number(int), default=57850, help="MJD of the observation")
    p.add_argument("--elev-min", type=number(float, -90, 90), default=None,
                   help="elevation cut in degrees (default: per station)")
    p.add_argument("--gain-amp", type=nonnegative(), default=0.0, help="station gain amplitude scatter (fraction)")
    p.add_argument("--gain-phase", type=nonnegative(), default=0.0, help="station gain phase scatter in degrees")
    p.add_argument("--systematic", type=nonnegative(), default=0.0, help="fractional systematic noise")
    p.add_argument("--no-noise", action="store_true", help="no thermal noise")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.set_defaults(func=run_simulate)

    q = sub.add_parser("inspect", help="summarise a uvfits observation (and plot it with --out)")
    q.add_argument("uvfits")
    q.add_argument("--json", help="write the summary as JSON to this file")
    q.add_argument("--out", help="folder for uv_coverage.png and dirty_image.png")
    q.add_argument("--avg", default="auto", metavar="auto|scan|none|SECONDS",
                   help="coherent time averaging, as reconstruct does it (default auto: per scan when the file has"
                        " several integrations per baseline and scan)")
    q.add_argument("--sys-noise", default="auto", metavar="auto|FRACTION",
                   help="fractional systematic error budget, as in reconstruct (auto: 0.02 for real correlator output)")
    q.add_argument("--npix", type=count(2), default=64, help="dirty image size in pixels")
    q.add_argument("--fov", type=positive(), default=200.0, help="dirty image field of view in uas")
    q.add_argument("--overwrite", action="store_true", help="replace the plots of an earlier run in --out")
    q.set_defaults(func=run_inspect)


def run_simulate(args: argparse.Namespace) -> dict:
    from .plotting import plot_image, plot_uv_coverage

    out = check_output_folder(args.out, "--out", SIMULATE_OUTPUTS, args.overwrite)

    if args.image:
        image, geom = read_fits_image(args.image)
    else:
        geom = ImageGeometry(args.npix, args.fov)
        image = render(args.model, geom, flux=args.flux, diameter=args.diameter, width=args.width)
    if image.sum() <= 0:
        raise InterferoError("image has no positive total flux")
    array = load_array(args.array)
    if args.stations:
        array = array.subset([s.strip() for s in args.stations.split(",") if s.strip()])
    setup = ObservingSetup(
        ra=args.ra if args.ra is not None else geom.ra, dec=args.dec if args.dec is not None else geom.dec,
        rf=args.rf, bw=args.bw, tstart=args.tstart, tstop=args.tstop, tint=args.tint, tadv=args.tadv,
        mjd=args.mjd, elev_min=args.elev_min, source=geom.source,
    )
    obs = simulate(image, geom, array, setup, seed=args.seed, thermal_noise=not args.no_noise,
                   gain_amp_std=args.gain_amp, gain_phase_std_deg=args.gain_phase, systematic=args.systematic)
    clear_outputs(out, SIMULATE_OUTPUTS)
    make_output_folder(out)
    write_uvfits(obs, out / "obs.uvfits")
    write_fits_image(image, geom, out / "truth.fits")
    plot_uv_coverage(obs, out / "uv_coverage.png")
    plot_image(image, geom, out / "truth.png", title=f"input image ({image.sum():.3f} Jy)")
    dgeom = ImageGeometry(geom.npix, geom.fov_uas)
    plot_image(dirty_image(obs, dgeom), dgeom, out / "dirty_image.png", title="dirty image (natural weights)",
               unit="Jy/beam (beam peak 1)")
    summary = dict(obs.summary(), array=array.name, image_total_flux_jy=float(image.sum()),
                   image_npix=geom.npix, image_fov_uas=geom.fov_uas, seed=args.seed)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(_human(summary))
    print(f"wrote {out}/obs.uvfits, truth.fits, uv_coverage.png, truth.png, dirty_image.png, summary.json")
    return summary


def run_inspect(args: argparse.Namespace) -> dict:
    if args.json is not None:
        check_output_file(args.json, "--json", create_parent=True)
    out = None if args.out is None else check_output_folder(args.out, "--out", INSPECT_OUTPUTS, args.overwrite)
    raw = read_uvfits(args.uvfits)
    geom = ImageGeometry(args.npix, args.fov)
    obs, prep = prepare_observation(raw, args.avg, args.sys_noise)
    summary = obs.summary() | {"as_read": {k: v for k, v in raw.summary().items()
                                           if k in ("n_vis", "n_times", "n_cphase", "n_logcamp", "median_snr")},
                               "preparation": prep.as_dict()}
    if args.json:
        write_output_text(Path(args.json), json.dumps(summary, indent=2))
    if out is not None:
        from .plotting import plot_image, plot_uv_coverage

        clear_outputs(out, INSPECT_OUTPUTS)
        make_output_folder(out)
        plot_uv_coverage(obs, out / "uv_coverage.png")
        plot_image(dirty_image(obs, geom), geom, out / "dirty_image.png", title="dirty image (natural weights)",
                   unit="Jy/beam (beam peak 1)")
    print(_human(summary))
    print("\n".join(prep.lines()))
    return summary


def _human(s: dict) -> str:
    return "\n".join([
        f"source {s['source']}  RA {s['ra_hours']:.4f} h  Dec {s['dec_deg']:.4f} deg  "
        f"{s['rf_hz'] / 1e9:.1f} GHz  bw {s['bw_hz'] / 1e9:.2f} GHz  MJD {s['mjd']}",
        f"stations ({s['n_stations']}): {' '.join(s['stations'])}",
        f"{s['n_vis']} visibilities on {s['n_baselines']} baselines at {s['n_times']} times "
        f"({s['time_range_hours'][0]:.2f}-{s['time_range_hours'][1]:.2f} h UTC), "
        f"longest baseline {s['max_uvdist_glambda']:.2f} Glambda, median S/N {s['median_snr']:.1f}",
        f"minimal closure sets: {s['n_cphase']} closure phases, {s['n_logcamp']} log closure amplitudes",
    ])
