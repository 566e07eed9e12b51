"""ehtim's RML imager next to our DPI posterior mean, on the same closure data.

    python scripts/compare_rml.py OBS.uvfits [--truth T.fits] [--stations AA,AP,LM,SM] [--dpi DIR]
        [--steps N] [--elbo-draws D] [--ensemble K] [--methods dpi,dps,ald,map] [--opt METHOD:NAME=VALUE ...]
        [--out DIR] [--json OUT.json]

RML (eht-imaging 1.3.2, imported, ``ttype='direct'``: its default NFFT path
needs pynfft): closure phases + log closure amplitudes, total-flux and
centroid constraints, TV^2 + MEM ("simple") regularisers, three rounds, each
started from the previous result blurred by the nominal resolution, at
32x32 over 160 uas from a Gaussian of the zero-baseline flux. (ehtim's ``tv``
regulariser gives a NaN objective here, "J: nan", and the imager stops at the
initial image; ``tv2``, the squared-gradient form, works.) DPI: our
``reconstruct`` (the shipped default prior, or ``--prior``) on the same data, or an existing
run folder (``--dpi``). ``--methods`` adds the baselines of ``reconstruct --method`` (DPS, ALD, SDEdit,
PnP-ADMM, MAP with the same prior; settings by ``--opt METHOD:NAME=VALUE``); a method whose result
fails ``reconstruct``'s total-flux check is listed with the error. ``--stations`` keeps only those sites (the sparse
cases of the paper's Figure 1: 4 or 5 stations); the reduced observation is
written to OUT/obs.uvfits and used by both.

Prints both side by side: nxcorr (unblurred, 10 and 20 uas blur) against the
truth, reduced chi^2 of closure phases and log closure amplitudes (our
definitions, which equal ehtim's), total flux and run time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from interfero.errors import InterferoError
from interfero.io import ImageGeometry, import_ehtim, quiet, read_fits_image, read_uvfits, write_uvfits
from interfero.operators import InterferometryOperator
from interfero.preparation import zero_baseline_flux
from interfero.regrid import regrid
from posterior.cli import parse_options
from posterior.metrics import image_metrics, reduced_chi2
from posterior.reconstruct import ReconstructSettings, reconstruct
from posterior.report import write_json


def rml(obs_path: Path, geom: ImageGeometry, flux: float, rounds: int = 3,
        maxit: int = 200) -> tuple[np.ndarray, float]:
    eh = import_ehtim()
    t0 = time.perf_counter()
    with quiet():
        obs = eh.obsdata.load_uvfits(str(obs_path))
        res = obs.res()
        init = eh.image.make_square(obs, geom.npix, geom.fov_uas * eh.RADPERUAS)
        init = init.add_gauss(flux, (50 * eh.RADPERUAS, 50 * eh.RADPERUAS, 0, 0, 0))
        init.imvec = np.maximum(init.imvec, 1e-6 * init.imvec.max())  # the log transform needs > 0
        img = init
        for _ in range(rounds):
            imgr = eh.imager.Imager(obs, img, prior_im=init, flux=flux, data_term={"cphase": 20, "logcamp": 20},
                                    reg_term={"tv2": 1, "simple": 1, "flux": 1, "cm": 1}, ttype="direct",
                                    maxit=maxit, stop=1e-6, norm_reg=True)
            imgr.make_image_I(show_updates=False)
            img = imgr.out_last().blur_circ(res)
        final = imgr.out_last()
    return final.imarr(), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("obs")
    ap.add_argument("--truth")
    ap.add_argument("--stations", help="comma-separated sites to keep")
    ap.add_argument("--dpi", help="existing reconstruct output folder")
    ap.add_argument("--prior", default=ReconstructSettings().prior,
                    help="prior of the DPI run: score prior name or path, or tv, mem, tv+mem")
    ap.add_argument("--reg-weight", type=float, default=ReconstructSettings().reg_weight,
                    help="weight of a tv / mem / tv+mem prior (nats)")
    ap.add_argument("--steps", type=int, default=ReconstructSettings().steps)
    ap.add_argument("--elbo-draws", type=int, default=ReconstructSettings().elbo_draws,
                    help="ELBO draws per image and DPI step")
    ap.add_argument("--ensemble", type=int, help="independent DPI fits pooled (default: reconstruct's)")
    ap.add_argument("--flux", type=float)
    ap.add_argument("--methods", default="dpi", help="comma-separated methods of reconstruct --method")
    ap.add_argument("--opt", action="append", default=[], metavar="METHOD:NAME=VALUE",
                    help="a setting of one method (repeatable), e.g. dps:zeta=0.3")
    ap.add_argument("--samples", type=int, default=ReconstructSettings().samples)
    ap.add_argument("--out", default="outputs/compare_rml")
    ap.add_argument("--json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    obs_path = Path(args.obs)
    obs = read_uvfits(obs_path)
    if args.stations:
        obs = obs.keep_stations([s.strip() for s in args.stations.split(",")])
        obs_path = out / "obs.uvfits"
        write_uvfits(obs, obs_path)
    geom = ImageGeometry(32, 160.0)
    flux = args.flux or zero_baseline_flux(obs)
    truth = None
    if args.truth:
        t, tg = read_fits_image(args.truth)
        truth = regrid(t, tg, geom)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    options: dict[str, dict] = {m: {} for m in methods}
    for item in args.opt:
        method, sep, setting = item.partition(":")
        if not sep or method not in options:
            raise InterferoError(f"--opt expects METHOD:NAME=VALUE for one of {', '.join(methods)}, got {item!r}")
        options[method] |= parse_options([setting])
    rml_img, rml_s = rml(obs_path, geom, flux)
    images = [("ehtim RML", rml_img, rml_s, {})]
    errors = {}
    for method in methods:
        folder = Path(args.dpi) if (method == "dpi" and args.dpi) else out / method
        if not (method == "dpi" and args.dpi):
            s = ReconstructSettings(steps=args.steps, elbo_draws=args.elbo_draws, flux=args.flux, prior=args.prior,
                                    reg_weight=args.reg_weight,
                                    method=method, method_options=options[method], samples=args.samples,
                                    ensemble=args.ensemble if method == "dpi" else None)
            try:
                reconstruct(obs_path, folder, s, truth=args.truth, progress=False, overwrite=True)
            except InterferoError as err:
                errors[method] = str(err)
                print(f"{method}: {err}")
                continue
        m = json.loads((folder / "metrics.json").read_text())
        images.append((f"{method.upper()} mean", read_fits_image(folder / "mean.fits")[0], m["runtime_s"],
                       {"method_settings": m.get("method_settings")}))
    op = InterferometryOperator(obs, geom, products=("cphase", "logcamp"))
    rows = {}
    for name, img, secs, extra in images:
        r = {"runtime_s": secs, "total_flux": float(img.sum()), **extra}
        r |= reduced_chi2(op, torch.tensor(img[None, None].copy()))
        if truth is not None:
            m = image_metrics(img, truth, geom)
            r |= {k: m[k] for k in ("nxcorr", "nxcorr_blur10", "nxcorr_blur20")}
        rows[name] = r
    keys = [k for k in ("nxcorr", "nxcorr_blur10", "nxcorr_blur20", "chi2_cphase", "chi2_logcamp", "total_flux",
                        "runtime_s") if k in rows["ehtim RML"]]
    print(f"{'':>16}" + "".join(f"{k:>15}" for k in keys))
    for name, r in rows.items():
        print(f"{name:>16}" + "".join(f"{r[k]:15.4g}" for k in keys))
    res = {"observation": str(obs_path), "stations": obs.summary()["stations"], "n_vis": obs.n_vis, **rows,
           "errors": errors}
    if args.json:
        write_json(res, args.json)


if __name__ == "__main__":
    from interfero.errors import run_script

    run_script(main, "compare_rml")
