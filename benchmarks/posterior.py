"""DPI benchmarks: ELBO prior vs exact PF-ODE prior, and wall time to a good reconstruction.

    python benchmarks/posterior.py [--json OUT.json] [--repeats 10] [--batch 4] [--max-steps 1500]
                                   [--layout-repeats 20]

On the shared EHT 2017 GRMHD observation (closure phases + log closure
amplitudes, 32x32 over 160 uas, the shipped default prior):

1. DPI steps per second with the ELBO prior (the ``reconstruct`` default:
   1 draw per image and step) and with the exact PF-ODE prior (Hutchinson, 1 probe,
   dopri5 rtol = atol = 1e-3, adjoint gradient), same flow, same batch; their
   ratio (goal >= 100x). Also the ELBO with 2 and 8 draws, to show the
   trade-off, and the score at eps alone (``--prior-method score``: one
   forward pass of the network, none backward) and its ratio to the default,
   and the default with the network's weights channels-last (how a loaded prior
   holds them) against contiguous, the two taking turns step by step in one fit
   (``--layout-repeats`` steps each), and their ratio.
   Medians of ``--repeats`` steps after one warm-up (the ODE step is slow: it
   is repeated ``--ode-repeats`` times).
2. Wall time of the ``reconstruct`` defaults until the posterior mean (64
   samples) reaches nxcorr >= 0.9 after 10 uas blurring against the truth
   (goal < 10 minutes on 2 CPU cores); evaluations every 25 steps are not
   counted. Also the nxcorr reached at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is called posterior.py: keep its own folder off the import path so `posterior` is the package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

import torch  # noqa: E402

from interfero.io import atomic_write_text, read_fits_image  # noqa: E402
from interfero.regrid import regrid  # noqa: E402
from posterior.dpi import DPI, DPIConfig, DPITarget  # noqa: E402
from posterior.metrics import blur_circular, nxcorr  # noqa: E402
from posterior.reconstruct import (  # noqa: E402
    ReconstructSettings,
    build_problem,
    fit_posterior,
    reconstruction_flow,
)

SHARED = str(Path(__file__).resolve().parents[2] / "shared/data/observations/grmhd_sgra_2017")


def step_rate(s: ReconstructSettings, batch: int, repeats: int, obs_path: str) -> tuple[float, float]:
    """Median seconds per DPI step and steps per second."""
    return layout_step_rates(s, batch, repeats, obs_path, (None,))[None]


def layout_step_rates(s: ReconstructSettings, batch: int, repeats: int, obs_path: str,
                      layouts: tuple) -> dict:
    """``{layout: (median seconds per step, steps per second)}`` of one DPI fit whose prior network's weights
    take each memory format of ``layouts`` in turn, step by step (None: as loaded), so that the machine's
    drifts fall on all alike; one warm-up step each first."""
    _, geom, op, prior, flux = build_problem(obs_path, s)
    cfg = DPIConfig(steps=10**6, batch=batch, lr=s.lr, n_samples=2, seed=s.seed)
    dpi = DPI(reconstruction_flow(s, geom, flux), DPITarget(op, op.data, prior), cfg, progress=False)
    times: dict = {fmt: [] for fmt in layouts}
    for i in range(repeats + 1):
        for fmt in layouts:
            if fmt is not None:
                prior.to(memory_format=fmt)
            dpi.cfg = replace(cfg, steps=dpi.step + 1)
            t0 = time.perf_counter()
            dpi.fit()
            if i:
                times[fmt].append(time.perf_counter() - t0)
    return {fmt: (statistics.median(t), 1.0 / statistics.median(t)) for fmt, t in times.items()}


def time_to_quality(s: ReconstructSettings, obs_path: str, truth_path: str, max_steps: int, target: float = 0.9):
    """The ``reconstruct`` fit (warm start included) for ``max_steps`` final steps, its nxcorr_blur10 every 25
    steps (global step count; evaluation time not counted)."""
    _, geom, op, prior, flux = build_problem(obs_path, s)
    truth, tgeom = read_fits_image(truth_path)
    truth = blur_circular(regrid(truth, tgeom, geom), 10.0, geom.psize_uas)
    state = {"eval_s": 0.0, "reached": None, "curve": []}

    def callback(dpi, _terms, first_step):
        step = first_step + dpi.step
        if step % 25:
            return
        t0 = time.perf_counter()
        with torch.no_grad():
            x, _ = dpi.flow.sample(64)
        mean = x.mean(0)[0].double().numpy()
        val = nxcorr(blur_circular(mean, 10.0, geom.psize_uas), truth)[0]
        state["eval_s"] += time.perf_counter() - t0
        fit_s = time.perf_counter() - t_start - state["eval_s"]
        state["curve"].append((step, round(fit_s, 2), round(val, 4)))
        if val >= target and state["reached"] is None:
            state["reached"] = (step, fit_s)  # the fit goes on to --max-steps: the curve shows what follows

    t_start = time.perf_counter()
    fit_posterior(replace(s, steps=max_steps), geom, flux, op, prior, progress=False, callback=callback)
    return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--ode-repeats", type=int, default=1)
    ap.add_argument("--layout-repeats", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=1500)
    ap.add_argument("--obs", default=f"{SHARED}/obs.uvfits")
    ap.add_argument("--truth", default=f"{SHARED}/truth.fits")
    args = ap.parse_args()
    base = ReconstructSettings()
    res: dict = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                 "batch": args.batch}
    rows = []
    for label, s, reps in (
        ("elbo (1 draw, default)", base, args.repeats),
        ("elbo (2 draws)", replace(base, elbo_draws=2), args.repeats),
        ("elbo (8 draws)", replace(base, elbo_draws=8), args.repeats),
        ("exact ODE (Hutchinson 1, adjoint)", replace(base, prior_method="ode"), args.ode_repeats),
        ("score at eps (gradient only)", replace(base, prior_method="score"), args.repeats),
    ):
        sec, rate = step_rate(s, args.batch, reps, args.obs)
        rows.append((label, sec, rate))
        print(f"{label:<36} {sec:10.3f} s/step {rate:10.4f} steps/s", flush=True)
    layouts = layout_step_rates(base, args.batch, args.layout_repeats, args.obs,
                                (torch.channels_last, torch.contiguous_format))
    for label, fmt in (("elbo (1 draw), channels-last weights", torch.channels_last),
                       ("elbo (1 draw), contiguous weights", torch.contiguous_format)):
        rows.append((label, *layouts[fmt]))
        print(f"{label:<36} {layouts[fmt][0]:10.3f} s/step {layouts[fmt][1]:10.4f} steps/s", flush=True)
    res["elbo_steps_per_s"] = rows[0][2]
    res["ode_steps_per_s"] = rows[3][2]
    res["speedup"] = rows[0][2] / rows[3][2]
    res["score_speedup_vs_elbo"] = rows[4][2] / rows[0][2]
    res["channels_last_speedup"] = rows[5][2] / rows[6][2]
    res["rates"] = {label: {"s_per_step": sec, "steps_per_s": rate} for label, sec, rate in rows}
    print(f"{'speedup ELBO (default) vs ODE':<36} {res['speedup']:10.1f}x (goal >= 100x)", flush=True)
    print(f"{'speedup score vs ELBO (default)':<36} {res['score_speedup_vs_elbo']:10.2f}x", flush=True)
    print(f"{'speedup channels-last vs contiguous':<36} {res['channels_last_speedup']:10.2f}x", flush=True)
    state = time_to_quality(base, args.obs, args.truth, args.max_steps)
    res["seconds_to_nxcorr_0p9"] = state["reached"][1] if state["reached"] else None
    res["steps_to_nxcorr_0p9"] = state["reached"][0] if state["reached"] else None
    res["nxcorr_blur10_curve"] = state["curve"]
    reached = state["reached"]
    print(f"{'time to nxcorr_blur10 >= 0.9':<36} "
          + (f"{reached[1]:10.1f} s ({reached[0]} steps; goal < 600 s)" if reached else
             f"not reached in {args.max_steps} steps"))
    if state["curve"]:
        step, _, last = state["curve"][-1]
        best = max(state["curve"], key=lambda c: c[2])
        print(f"{'nxcorr_blur10 at the end':<36} {last:10.4f}   ({step} steps; highest {best[2]:.4f} at {best[0]})")
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
