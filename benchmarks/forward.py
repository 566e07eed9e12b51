"""Forward-model benchmarks against ehtim, measured in the same process.

    python benchmarks/forward.py [--json OUT.json] [--repeats 5]

1. Simulating a 24-hour EHT 2017 track of a 64x64 image with thermal noise:
   ``interfero.simulate`` (vectorised uv-coverage + DFT + noise) vs ehtim's
   ``Image.observe(..., ttype='direct')``.
2. Closure-phase + log-closure-amplitude chi^2 and its gradient for 64 images
   of 64x64: ours batched (one call, autograd) vs ehtim's ``chisq`` /
   ``chisqgrad`` looped over the images (its Fourier matrices built once,
   outside the timing, as its imager does).

Medians of ``--repeats`` runs after one warm-up. Goals: >= 10x and >= 20x.
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch

from interfero.arrays import load_array
from interfero.io import ImageGeometry, atomic_write_text, import_ehtim, quiet
from interfero.models import render
from interfero.operators import InterferometryOperator
from interfero.simulate import simulate
from interfero.timing import median_seconds
from interfero.uvcoverage import ObservingSetup


def bench_simulation(eh, repeats: int) -> dict:
    geom = ImageGeometry(64, 160.0)
    img = render("crescent", geom, flux=2.0)
    setup = ObservingSetup(tint=60.0, tadv=600.0, tstart=0.0, tstop=24.0, mjd=57850)
    array = load_array("EHT2017")
    ours = median_seconds(lambda: simulate(img, geom, array, setup, seed=0), repeats)
    with quiet():
        earr = eh.array.Array(_ehtim_tarr(eh, array))
        im = eh.image.make_empty(64, geom.fov_uas * eh.RADPERUAS, setup.ra, setup.dec, rf=setup.rf, mjd=setup.mjd)
        im.imvec = img.flatten()

        def theirs_fn():
            with quiet():
                im.observe(earr, setup.tint, setup.tadv, setup.tstart, setup.tstop, setup.bw, mjd=setup.mjd,
                           ttype="direct", add_th_noise=True, ampcal=True, phasecal=True, opacitycal=True,
                           dcal=True, frcal=True, stabilize_scan_phase=True, stabilize_scan_amp=True,
                           jones=False, inv_jones=False, seed=1, verbose=False)

        theirs = median_seconds(theirs_fn, repeats)
    n_vis = simulate(img, geom, array, setup).n_vis
    return {"uv_sim_ours_s": ours, "uv_sim_ehtim_s": theirs, "uv_sim_speedup_vs_ehtim": theirs / ours,
            "uv_sim_n_vis": n_vis}


def _ehtim_tarr(eh, array):
    tarr = np.zeros(len(array), dtype=eh.const_def.DTARR)
    tarr["site"] = array.names
    tarr["x"], tarr["y"], tarr["z"] = array.xyz.T
    tarr["sefdr"], tarr["sefdl"] = array.sefd.T
    return tarr


def bench_closure_chi2(eh, repeats: int, batch: int = 64) -> dict:
    geom = ImageGeometry(64, 160.0)
    setup = ObservingSetup(tadv=600.0)
    truth = render("crescent", geom, flux=2.0)
    obs = simulate(truth, geom, "EHT2017", setup, seed=0)
    op = InterferometryOperator(obs, geom, products=("cphase", "logcamp"))
    rng = np.random.default_rng(0)
    imgs = np.clip(truth[None] + 0.002 * rng.standard_normal((batch, 64, 64)), 1e-6, None)
    x0 = torch.tensor(imgs)[:, None]

    def ours_fn():
        x = x0.clone().requires_grad_(True)
        c = op.chi2(x)
        (c["cphase"].sum() + c["logcamp"].sum()).backward()
        return x.grad

    ours = median_seconds(ours_fn, repeats)
    iu = eh.imaging.imager_utils
    from interfero.io import observation_to_ehtim

    with quiet():
        o = observation_to_ehtim(obs)
        prior = eh.image.make_empty(64, geom.fov_uas * eh.RADPERUAS, obs.ra, obs.dec, rf=obs.rf, mjd=obs.mjd)
        mats = {d: iu.chisqdata(o, prior, [], d, ttype="direct") for d in ("cphase", "logcamp")}

    def theirs_fn():
        for im in imgs:
            v = im.flatten()
            for d, (data, sigma, a) in mats.items():
                iu.chisq(v, a, data, sigma, d, ttype="direct")
                iu.chisqgrad(v, a, data, sigma, d, ttype="direct")

    theirs = median_seconds(theirs_fn, repeats)
    # agreement of the values (a benchmark that is also a check)
    c = op.chi2(x0[:1])
    ref = {}
    for d, (data, sigma, a) in mats.items():
        ref[d] = iu.chisq(imgs[0].flatten(), a, data, sigma, d, ttype="direct")
    agree = max(abs(float(c[d][0]) / ref[d] - 1) for d in mats)
    return {"closure_chi2_grad_ours_s": ours, "closure_chi2_grad_ehtim_s": theirs,
            "closure_chi2_grad_speedup_vs_ehtim": theirs / ours, "closure_batch": batch,
            "closure_n_cphase": obs.closures.n_cphase, "closure_n_logcamp": obs.closures.n_logcamp,
            "closure_chi2_max_rel_diff_vs_ehtim": agree}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the figures as JSON")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    eh = import_ehtim()
    res = {"torch_threads": torch.get_num_threads(), "machine": platform.machine(), "repeats": args.repeats}
    res.update(bench_simulation(eh, args.repeats))
    res.update(bench_closure_chi2(eh, args.repeats))
    rows = [
        ("24 h EHT2017 simulation (64x64, noise)", res["uv_sim_ours_s"], res["uv_sim_ehtim_s"],
         res["uv_sim_speedup_vs_ehtim"], 10),
        (f"cphase+logcamp chi2+grad, {res['closure_batch']} x 64x64", res["closure_chi2_grad_ours_s"],
         res["closure_chi2_grad_ehtim_s"], res["closure_chi2_grad_speedup_vs_ehtim"], 20),
    ]
    print(f"{'task':44s} {'ours (s)':>10s} {'ehtim (s)':>10s} {'speedup':>9s} {'goal':>6s}")
    for name, ours, theirs, ratio, goal in rows:
        print(f"{name:44s} {ours:10.4f} {theirs:10.4f} {ratio:8.1f}x {goal:5d}x")
    print(f"chi2 agreement with ehtim: max relative difference {res['closure_chi2_max_rel_diff_vs_ehtim']:.1e}")
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
