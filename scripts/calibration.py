"""Calibration of the default reconstruction's uncertainty: coverage of known truths by its intervals.

    python scripts/calibration.py --n N --json OUT.json [--out DIR] [--arrays EHT2017,EHT2017-JCMT-PV-SPT]
        [--sets in_distribution,grmhd_like] [--steps 1000] [--elbo-draws 1] [--batch 16] [--lr 2e-3] [--samples 256]
        [--ensemble 3] [--warm-start-kind map] [--alpha 1] [--method pnp-dm --opt NAME=VALUE ...]
        [--jobs 2]
        [--png OUT.png] [--rescore]

Test sets of ``--n`` truths each (32x32 over 160 uas, Jy/pixel):

- ``in_distribution``: draws of the default prior's own training law
  (its record's ``training.data.law``: ``disk-lnflux`` for the shipped
  ``bh32lnflux``) with seed ``--seed`` (default 20261201; the shipped prior
  saw seed 0). On this set a correct posterior is calibrated by construction
  (simulation-based calibration): its 68% intervals hold the truth 68% of the
  time.
- ``grmhd_like``: the shared GRMHD truth (``../shared/data/observations/
  grmhd_sgra_2017/truth.fits``) rotated by a random angle, mirrored with
  probability 1/2, scaled in size by U(0.8, 1.2) and in flux log-normally
  (median 1.4 Jy, sigma of ln 0.35): images the prior was not trained on.
- ``prior_draws`` (a diagnostic, not in the default ``--sets``): draws of the
  default prior's own density ``p_eps`` (reverse SDE, 500 steps, in batches of
  ``DRAW_BATCH`` = 4 seeded by ``--seed`` + the batch's index, so that a truth
  does not depend on ``--n``; its pixel jitter included), the very law the reconstruction
  assumes. Its coverage is that of the inference alone: a shortfall on
  ``in_distribution`` that stays here is the posterior approximation's; one
  that goes away here is the gap between the trained prior and its training law.

Each truth is observed with each array of ``--arrays`` (names edited as in
``interfero simulate --array``; default all EHT 2017 sites and 5 stations,
ALMA APEX LMT SMA SMT), 24 h of Sgr A*, 60 s every 10 min, thermal noise,
seeded by the case, then reconstructed with the defaults (``--steps``,
``--elbo-draws``, ``--batch``, ``--lr``, ``--samples``; ``--ensemble``: independent flow fits pooled,
as ``interfero reconstruct --ensemble``; ``--warm-start-kind``: what starts each flow, as in ``reconstruct``;
``--alpha``: the Renyi order of the fits' objective, as ``reconstruct --alpha``; ``--method`` and ``--opt``:
another sampling method of ``reconstruct --method`` and its settings, in place of the DPI fits).
Cases run ``--jobs`` at a time with one torch thread each, in order of
their index with every set and array in turn (a run stopped early has
measured each set and array on the same number of truths);
each case's results go to ``OUT/<set>/<array>/case_<i>/case.json``, and a
rerun with the same settings (``OUT/settings.json``, which records the default prior and its law too;
``--n`` may grow) skips
finished cases (resumable; a case another live run holds is refused).
Cost: a case is one default reconstruction, about 11 minutes of one core (``--method pnp-dm --samples 32``:
about 4); ``--n 50`` over both sets and both arrays is 200 cases, about 18 hours with ``--jobs 2`` on 2 cores
(6 with PnP-DM). Size a run with ``--n``, ``--sets`` and ``--arrays``; the fit settings scale it too, but then
it calibrates those settings, not the default.
``--rescore`` scores the finished cases anew from their saved samples (ring
features with the current extractor) without refitting. The JSON and
the PNG are rewritten after every case, so an interrupted run reports the
cases it finished.

Per set and array: pixel coverage of the 68% / 95% intervals (source pixels,
truth aligned by the nxcorr shift, pooled over cases), the same for the truth
plus the prior's own pixel jitter (``coverage_jittered_68/95``: the prior's
density ``p_eps`` is the training law smoothed by ``N(0, eps_std^2)`` per
pixel, 1.2 mJy for the shipped prior, so a calibrated posterior holds such
truths at about the nominal rates, slightly less as the data come from the
clean truth, and the clean truth more often: the two bracket the nominal
rate; for ``--method pnp-dm`` the jitter is ``rho_min`` times the prior's scale, the smoothing of the prior
its samples are drawn under, ``posterior.methods.sample_jitter``; the ``prior_draws`` truths carry the
prior's own jitter, so only the rest is added to them), coverage of the ring
diameter's 68% / 95% intervals (truth: the same extractor on the regridded
truth; ``ring_diameter_jittered_coverage_68/95``: on the truth plus the prior's jitter, as the samples are
measured), the rank of the truth among the samples per source pixel (a
histogram, flat when calibrated; for an ensemble the truth's place in the
combined t distribution of Rubin's rules, as reconstruct's intervals are
made), empirical coverage at nominal levels 10-95% (reliability diagram,
``--png``), each case's ring diameter: truth, posterior median and 68%
interval (``ring_diameters_uas``: ``[case, truth, median, lo68, hi68]``; the
PNG's third panel), the median over cases of the samples' own reduced chi^2 beside the mean's
(``chi2_samples_median``, ``chi2_mean_median``: reconstruct's ``chi2_samples``; calibrated samples fit
the data about as well as the truth, near 1), the same for each fit of a case alone (``chi2_fits_median``:
medians over every fit of its own mean's and its own samples' chi^2, over all fits and over those whose mean
reached the data, at most ``posterior.calibration.FIT_CHI2_STALLED`` = 2; an exact posterior's samples exceed
its mean by at most 1),
the coverage of the cases whose fits all reached the data beside those where one stalled
(``by_fit_convergence``), how the ring-diameter 68% intervals miss (``ring_diameter_misses_68``: by at most
2 uas, under half a pixel, or by more than 10 uas, on another ring size; ``posterior.calibration.ring_misses``),
the truth's log-likelihood rank among the samples'
(``loglik_rank_mean``, ``loglik_rank_hist`` over cases, ``loglik_excess_median``: reconstruct's
``truth_loglik_rank`` / ``truth_loglik_excess``, a test of simulation-based calibration that is uniform over
truths, mean 0.5, with an excess near 0 nats for an exact posterior), the coverage by the pooled samples' own
equal-tailed quantiles (``coverage_quantiles_68/95``; for an ensemble, the intervals of the mixture itself
rather than Rubin's t intervals), the coverage over the pixels where the posterior mean is at or above 10% of its
peak (``coverage_mean_region_68/95`` with their resampling ranges: pixels chosen from the data, over which an
exact posterior's intervals hold the truth at the nominal rates, where over the truth's own bright pixels, those
of ``coverage_68/95``, they hold it more or less often once the posterior is wide:
``posterior.metrics.posterior_region``), how far the posterior mean is from the truth in units of its std
(``median_abs_z``: per case the median over the truth's source pixels of ``|mean - truth| / std``, its median,
min and max over cases; 0.67 for calibrated Gaussian intervals), and per-case run times
(``seconds_per_case``: this run's wall clock; ``fit_seconds_per_case``: the DPI fits' own time, which a resumed
case keeps; at the start and after each case the script prints how long the cases left take at that median,
``--jobs`` at a time). ``coverage_68_interval`` and ``coverage_95_interval``: the
central 90% of the pooled coverage when the cases are resampled (how far the
finite test set leaves it uncertain); ``ring_diameter_coverage_68/95_interval``: the exact binomial 90%
range of the ring's hit rate; ``rank_hist_mean_region``: the rank histogram over the mean's pixels.
``goal``: the calibration goal (the truth's pixels and the ring diameter, 68% and 95% each within 5 points
of nominal, on at least 50 truths) checked item by item (``met``), each check also saying whether the
nominal rate lies inside its 90% range (``nominal_in_range``); each ring check adds the chance that a
calibrated posterior passes it with this many truths (at 50 truths 0.55 for the 68% interval: the goal's
ring test is a coin toss even for an exact posterior).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from interfero.errors import InterferoError, run_script
from interfero.io import ImageGeometry, atomic_write_text, read_fits_image, write_fits_image, write_uvfits
from posterior.calibration import (
    LEVELS,
    aggregate,
    case_intervals,
    fit_chi2s,
    jittered_coverage,
    jittered_diameter_coverage,
    mean_region_coverage,
    plot,
    quantile_coverage,
    rank_histogram,
    worst_fit_chi2,
)

ROOT = Path(__file__).resolve().parents[1]
GRMHD = ROOT.parent / "shared" / "data" / "observations" / "grmhd_sgra_2017" / "truth.fits"
GEOM = ImageGeometry(32, 160.0)
SETS = ("in_distribution", "grmhd_like", "prior_draws")
DEFAULT_SETS = SETS[:2]  # prior_draws is a diagnostic: run it with --sets prior_draws
DRAW_BATCH = 4  # prior_draws: reverse-SDE draws per batch, batch k seeded by seed + k


def truths(kind: str, n: int, seed: int, law: str, prior=None) -> np.ndarray:
    """``(n, 32, 32)`` truths of a test set (module docstring; ``law``: the default prior's training law;
    ``prior``: the default prior, loaded here if not given, for ``prior_draws``)."""
    from scipy import ndimage

    if kind == "in_distribution":
        from priors.datasets.blackholes import make_black_holes

        return make_black_holes(n, GEOM.npix, GEOM.fov_uas, seed=seed, law=law)[0][:, 0].astype(float)
    if kind == "prior_draws":
        import torch

        from priors.pretrained import load_prior

        prior = prior or load_prior("default", expect_image_size=GEOM.npix)
        draws = [prior.sample(DRAW_BATCH, steps=500, generator=torch.Generator().manual_seed(seed + k), denoise=False)
                 for k in range(-(-n // DRAW_BATCH))]  # truth i is the same for any n >= i + 1
        return torch.cat(draws)[:n, 0].double().numpy()
    if kind != "grmhd_like":
        raise InterferoError(f"unknown test set {kind!r} (choose {', '.join(SETS)})")
    if not GRMHD.is_file():
        raise InterferoError(f"the grmhd_like set needs {GRMHD}")
    from interfero.regrid import regrid

    img, geom = read_fits_image(GRMHD)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = ndimage.rotate(img, rng.uniform(0, 360), reshape=False, order=1)
        if rng.uniform() < 0.5:
            im = im[:, ::-1]
        scaled = ImageGeometry(geom.npix, geom.fov_uas * rng.uniform(0.8, 1.2))  # same pixels, other size
        im = np.clip(regrid(im, scaled, GEOM), 0, None)
        out.append(im / im.sum() * 1.4 * np.exp(0.35 * rng.standard_normal()))
    return np.stack(out)


def run_case(job: dict) -> dict:
    """Simulate, reconstruct and score one case (in a worker process, one torch thread); with
    ``job["rescore"]`` a finished case is scored anew from its saved samples (:func:`score_case`)."""
    import torch

    torch.set_num_threads(1)
    folder = Path(job["folder"])
    done = folder / "case.json"
    if done.is_file():
        old = json.loads(done.read_text())
        if not job.get("rescore") or "error" in old:
            return with_added_scores(job, old)
        check_case_truth(job)
        m = json.loads((folder / "rec" / "metrics.json").read_text())
        res = score_case(job, folder, m, old["seconds"], rescore=True)
        atomic_write_text(done, json.dumps(res, indent=1))
        return res
    folder.mkdir(parents=True, exist_ok=True)
    with case_claim(folder):
        return _fit_case(job, folder)


@contextmanager
def case_claim(folder: Path):
    """Hold ``folder/running.pid`` while this process runs the case: a second run into the same ``--out`` (whose
    fits would overwrite this one's checkpoints) is refused; a claim left by a process that died is taken over."""
    lock = folder / "running.pid"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        text = lock.read_text().strip()
        pid = int(text) if text.isdigit() else 0
        if pid > 0 and pid != os.getpid() and _alive(pid):
            raise InterferoError(f"{folder} is being run by process {pid}: one calibration run per --out") from None
        lock.unlink(missing_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only; PermissionError means it exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _fit_case(job: dict, folder: Path) -> dict:
    """Simulate, reconstruct (resuming from the case's checkpoints) and score one case."""
    from interfero.simulate import simulate
    from posterior.reconstruct import ReconstructSettings, reconstruct

    done = folder / "case.json"
    truth = np.asarray(job["truth"])
    check_case_truth(job)  # an interrupted case resumes only on its own truth's checkpoints
    t0 = time.perf_counter()
    obs = simulate(truth, GEOM, job["array"], seed=job["seed"])
    write_uvfits(obs, folder / "obs.uvfits")
    write_fits_image(truth, GEOM, folder / "truth.fits")
    s = ReconstructSettings(steps=job["steps"], prior_method=job["prior_method"], elbo_draws=job["elbo_draws"],
                            batch=job["batch"], lr=job["lr"], samples=job["samples"], seed=job["seed"], threads=1,
                            ensemble=job["ensemble"], warm_start=job["warm_start"], alpha=job["alpha"],
                            flow_base=job["flow_base"], laplace_start=job["laplace_start"],
                            flow_basis=job["flow_basis"], method=job.get("method", "dpi"),
                            method_options=dict(job.get("method_options", {})), device=job.get("device", "cpu"))
    try:
        m = reconstruct(folder / "obs.uvfits", folder / "rec", s, truth=folder / "truth.fits", progress=False,
                        resume=True)  # an interrupted case continues from its checkpoint
    except InterferoError as err:  # a refused fit (diverged) is a result too: counted, not scored
        res = {"case": job["case"], "array": job["array"], "set": job["set"], "error": str(err),
               "seconds": time.perf_counter() - t0}
        atomic_write_text(done, json.dumps(res, indent=1))
        return res
    res = score_case(job, folder, m, time.perf_counter() - t0)
    atomic_write_text(done, json.dumps(res, indent=1))
    return res


def score_case(job: dict, folder: Path, m: dict, seconds: float, rescore: bool = False) -> dict:
    """The scores of a reconstructed case from its saved samples and ``metrics.json`` ``m``; with ``rescore``
    the ring features are measured anew on the samples with the current extractor (the fits are kept)."""
    from interfero.features import RingExtractor
    from posterior.metrics import aligned_truth, interval_coverage
    from posterior.ring import feature_coverage, ring_posterior

    truth = np.asarray(job["truth"])
    samples, sizes = case_samples(folder)
    shift = m["nxcorr_shift_px"]
    aligned, region = aligned_truth(truth, shift)
    bounds = case_intervals(samples, sizes, LEVELS)
    cov = interval_coverage(bounds, truth, shift)
    inside = {lv: cov[f"truth_coverage_{lv}"] for lv in bounds}
    true_ring = RingExtractor(GEOM.npix, GEOM.fov_uas)(truth)
    ring = m.get("ring", {})
    if rescore:
        try:
            ring = ring_posterior(samples, GEOM.fov_uas, sizes)
        except InterferoError as err:  # no ring in the samples: as reconstruct records it
            ring = {"error": str(err)}
    d = ring.get("diameter_uas")
    res = {"case": job["case"], "array": job["array"], "set": job["set"], "seconds": seconds,
           "fit_seconds": m["fit_seconds"], "device": m.get("device", "cpu"),
           "coverage_68": inside["0.68"], "coverage_95": inside["0.95"],
           "coverage_pixels": m["coverage_pixels"], "levels": inside,
           "rank_hist": rank_histogram(samples, sizes, aligned, region),
           "nxcorr_blur10": m["nxcorr_blur10"], "chi2_cphase": m["chi2_cphase"], "chi2_logcamp": m["chi2_logcamp"],
           "true_diameter_uas": true_ring.null_diameter, "fits_chi2_worst": worst_fit_chi2(m),
           "fits_chi2": fit_chi2s(m)}
    if d is not None and np.isfinite(true_ring.null_diameter):
        cov = feature_coverage(ring, {"diameter_uas": true_ring.null_diameter})["diameter_uas"]
        res["ring_diameter_in68"], res["ring_diameter_in95"] = cov["in68"], cov["in95"]
        res["diameter_median_uas"] = d["median"]
        res["diameter_interval68_uas"] = [d["lo68"], d["hi68"]]
        res |= jittered_diameter_coverage(d, truth, GEOM.fov_uas, job["jitter"], job["seed"])
    res["chi2_samples_median"] = samples_fit(folder, m, samples, sizes)
    return (res | error_scale(folder, truth, shift)
            | jittered_coverage(bounds, aligned, region, job["jitter"], job["seed"])
            | quantile_coverage(samples, aligned, region) | loglik_rank(folder, m, samples, sizes, truth)
            | mean_region_coverage(bounds, truth, shift, samples, sizes))


def error_scale(folder: Path, truth: np.ndarray, shift) -> dict[str, float]:
    """``median_abs_z``: the median over the truth's source pixels of ``|mean - truth| / std`` of a case's saved
    posterior mean and std (:func:`posterior.metrics.error_against_std`, the truth aligned as for coverage):
    0.67 for calibrated Gaussian intervals, larger for intervals too narrow."""
    import h5py

    from posterior.metrics import error_against_std

    with h5py.File(folder / "rec" / "samples.h5", "r") as f:
        mean, std = f["mean"][0].astype(float), f["std"][0].astype(float)
    return {"median_abs_z": error_against_std(mean, std, truth, shift)["truth_median_abs_z"]}


def case_samples(folder: Path) -> tuple[np.ndarray, list[int] | None]:
    """A reconstructed case's saved samples ``(N, 32, 32)`` and its fits' sizes (None for one fit)."""
    import h5py

    with h5py.File(folder / "rec" / "samples.h5", "r") as f:
        return f["samples"][:, 0].astype(float), (f["fit_sizes"][:].tolist() if "fit_sizes" in f else None)


def loglik_rank(folder: Path, m: dict, samples: np.ndarray, sizes: list[int] | None,
                truth: np.ndarray) -> dict[str, float]:
    """``loglik_rank`` and ``loglik_excess``: reconstruct's ``truth_loglik_rank`` / ``truth_loglik_excess``
    (:func:`posterior.metrics.truth_loglik_rank`; uniform over truths and centred near 0 when calibrated), or for
    a case whose ``metrics.json`` predates them, measured here on its saved samples, each fit's moved back to
    where it was fitted."""
    if "truth_loglik_rank" not in m:
        from posterior.metrics import truth_loglik_rank

        m = truth_loglik_rank(case_operator(str(folder)), case_fitted_samples(m, samples, sizes), truth)
    return {"loglik_rank": m["truth_loglik_rank"], "loglik_excess": m["truth_loglik_excess"]}


SAMPLE_SCORES = ("coverage_jittered_68", "coverage_quantiles_68", "loglik_rank", "rank_hist_mean_region")  # one
# key of each score added later that is measured on the samples (and ring_diameter_jittered_in68 where the case
# has a ring interval)
ADDED_SCORES = (*SAMPLE_SCORES, "median_abs_z", "fits_chi2_worst", "fits_chi2")  # and those from the saved mean
# and std and from metrics.json alone


def with_added_scores(job: dict, res: dict) -> dict:
    """A finished case's scores with those added after it was scored (``coverage_jittered_68/95``,
    ``coverage_quantiles_68/95``, ``loglik_rank``, ``loglik_excess``, ``coverage_mean_region_68/95``,
    ``median_abs_z``, ``fits_chi2_worst``, ``fits_chi2``), measured on its saved samples (the last three from its
    saved mean and std and its ``metrics.json``) and written back to its ``case.json``."""
    from posterior.metrics import aligned_truth

    if "error" in res:
        return res
    ringed = "diameter_median_uas" in res
    sampled = all(k in res for k in SAMPLE_SCORES) and (not ringed or "ring_diameter_jittered_in68" in res)
    if sampled and all(k in res for k in ADDED_SCORES):
        return res
    folder = Path(job["folder"])
    m = json.loads((folder / "rec" / "metrics.json").read_text())
    truth = np.asarray(job["truth"])
    res = res | error_scale(folder, truth, m["nxcorr_shift_px"])  # from the saved mean and std alone
    res["fits_chi2_worst"] = worst_fit_chi2(m)
    res["fits_chi2"] = fit_chi2s(m)
    if not sampled:
        samples, sizes = case_samples(folder)
        aligned, region = aligned_truth(truth, m["nxcorr_shift_px"])
        bounds = case_intervals(samples, sizes, LEVELS)
        res = (res | jittered_coverage(bounds, aligned, region, job["jitter"], job["seed"])
               | quantile_coverage(samples, aligned, region) | loglik_rank(folder, m, samples, sizes, truth)
               | mean_region_coverage(bounds, truth, m["nxcorr_shift_px"], samples, sizes))
        if ringed:  # the interval as the case's own scores measured it (a rescored case's: the current extractor's)
            from posterior.ring import ring_posterior

            res |= jittered_diameter_coverage(ring_posterior(samples, GEOM.fov_uas, sizes)["diameter_uas"], truth,
                                              GEOM.fov_uas, job["jitter"], job["seed"])
    atomic_write_text(folder / "case.json", json.dumps(res, indent=1))
    return res


def samples_fit(folder: Path, m: dict, samples: np.ndarray, sizes: list[int] | None) -> dict[str, float]:
    """The median over a case's samples of each one's own reduced chi^2 per data product (reconstruct's
    ``chi2_samples``; for cases whose ``metrics.json`` predates it, measured here on the saved samples,
    each fit's moved back to where it was fitted)."""
    if "chi2_samples" in m:
        return {k: v["median"] for k, v in m["chi2_samples"].items()}
    from posterior.metrics import sample_chi2

    op = case_operator(str(folder))
    return {k: float(np.median(v)) for k, v in sample_chi2(op, case_fitted_samples(m, samples, sizes)).items()}


@lru_cache(maxsize=1)
def case_operator(folder: str):
    """The operator reconstruct fitted a case's data with (its ``obs.uvfits``, the default settings), built
    once per case for the scores measured on its saved samples."""
    from posterior.reconstruct import ReconstructSettings, build_problem

    return build_problem(Path(folder) / "obs.uvfits", ReconstructSettings())[2]


def case_fitted_samples(m: dict, samples: np.ndarray, sizes: list[int] | None) -> np.ndarray:
    """A case's saved samples with each fit's moved back to where it was fitted (its ``metrics.json`` ``m``
    records the moves that pooled them)."""
    from posterior.summary import fitted_samples

    if not sizes:
        return samples
    return fitted_samples(samples, sizes, [mm.get("shift_px", [0, 0]) for mm in m.get("ensemble_members", [{}])])


def time_left(results: list[dict], n_left: int, jobs: int) -> str:
    """How long the cases still to run take at the finished cases' median fit time, ``jobs`` at a time (a
    sizing aid for ``--n`` and ``--jobs``; the first cases of a run give no estimate)."""
    if not n_left:
        return "every case finished"
    fits = [r["fit_seconds"] for r in results if "fit_seconds" in r]
    if not fits:
        return f"{n_left} cases to run, {jobs} at a time"
    med = float(np.median(fits))
    return (f"{n_left} cases to run, {jobs} at a time: about {n_left * med / jobs / 3600:.1f} h at the finished"
            f" cases' median fit time of {med:.0f} s")


def summary(results: list[dict], settings: dict, sets: list[str], arrays: list[str]) -> dict:
    """The output JSON of the cases finished so far (``n_cases`` says how many per set and array)."""
    out: dict = {"settings": settings}
    for s in sets:
        out[s] = {a: aggregate([r for r in results if r["set"] == s and r["array"] == a]) for a in arrays}
    return out


# settings added after runs began, at the values those runs used
SETTINGS_BEFORE = {"lr": 2e-3, "prior": "bh32lnflux", "law": "disk-lnflux", "warm_start": "flow",
                   "alpha": 1.0, "flow_base": "diagonal", "laplace_start": "own", "prior_method": "elbo",
                   "flow_basis": "pixel", "method": "dpi", "method_options": {}}


def check_run_settings(folder: Path, settings: dict) -> None:
    """A rerun in ``folder`` resumes its finished cases only with the same settings (``--n`` may grow)."""
    path = folder / "settings.json"
    if path.is_file():
        old = SETTINGS_BEFORE | json.loads(path.read_text())
        differ = sorted(k for k in settings if k not in ("n", "arrays", "sets") and old.get(k) != settings[k])
        if differ:
            raise InterferoError(f"{folder} holds cases run with other settings ({', '.join(differ)}: "
                                 f"{', '.join(str(old.get(k)) for k in differ)}); use another --out")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=1))


def case_jobs(truth_sets: dict[str, np.ndarray], arrays: list[str], args: argparse.Namespace) -> list[dict]:
    """One job per truth of each set (``truth_sets``: set name -> ``(n, 32, 32)`` truths) and array, in order
    of the case index with every set and array in turn: a run stopped early has measured each set and array
    on the same number of truths. ``args``: the fit settings (``steps``, ``lr``, ... as parsed by ``main``)."""
    jobs = []
    for s, imgs in truth_sets.items():
        for arr in arrays:
            for i, t in enumerate(imgs):
                jobs.append({"set": s, "array": arr, "case": i, "truth": t.tolist(), "seed": args.seed + i,
                             "steps": args.steps, "prior_method": args.prior_method, "elbo_draws": args.elbo_draws,
                             "batch": args.batch, "lr": args.lr,
                             "samples": args.samples, "warm_start": args.warm_start, "alpha": args.alpha,
                             "flow_base": args.flow_base, "laplace_start": args.laplace_start,
                             "flow_basis": args.flow_basis,
                             "ensemble": args.ensemble, "rescore": args.rescore,
                             "method": args.method, "method_options": args.method_options,
                             "device": args.device,
                             "jitter": math.sqrt(max(args.jitter**2 - args.eps_std**2, 0.0)) if s == "prior_draws"
                             else args.jitter,  # those truths carry the prior's own jitter: only the rest is added
                             "folder": str(Path(args.out) / s / arr / f"case_{i:03d}")})
    return sorted(jobs, key=lambda j: j["case"])  # stable: sets and arrays keep their order within a case


def check_case_truth(job: dict) -> None:
    """A case folder is reused (finished, rescored or resumed) only if its ``truth.fits`` is the job's truth (within
    1e-6 Jy/pixel): a case fitted to another image (another set, seed or definition of the set) is refused."""
    path = Path(job["folder"]) / "truth.fits"
    if not path.is_file():
        return  # a case refused before its truth was written
    saved, _ = read_fits_image(path)
    if not np.allclose(saved, np.asarray(job["truth"]), rtol=0, atol=1e-6):
        raise InterferoError(f"{path} is not this run's truth for {job['set']} case {job['case']}: the case was"
                             " fitted to another image; use another --out")


def finished_cases(jobs: list[dict], rescore: bool = False) -> tuple[list[dict], list[dict]]:
    """The results of the jobs whose case is finished (its ``case.json``), read at once so that a rerun reports
    them all from the start, also those its case-by-case order reaches late; and the jobs left to run (with
    ``rescore``, all of them: finished cases are scored anew)."""
    if rescore:
        return [], list(jobs)
    results, todo = [], []
    for j in jobs:
        done = Path(j["folder"]) / "case.json"
        if done.is_file():
            check_case_truth(j)
            results.append(with_added_scores(j, json.loads(done.read_text())))
        else:
            todo.append(j)
    return results, todo


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def main() -> None:
    from posterior.cli import parse_options
    from posterior.flows import BASES
    from posterior.methods import SAMPLING_METHODS
    from posterior.reconstruct import FLOW_BASES, LAPLACE_STARTS, WARM_STARTS, ReconstructSettings, check_settings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, required=True, help="truths per test set")
    p.add_argument("--json", required=True)
    p.add_argument("--png", help="reliability diagram and rank histograms")
    p.add_argument("--out", default="outputs/calibration")
    p.add_argument("--arrays", default="EHT2017,EHT2017-JCMT-PV-SPT")
    p.add_argument("--sets", default=",".join(DEFAULT_SETS),
                   help=f"test sets, comma-separated: {', '.join(SETS)} (default {','.join(DEFAULT_SETS)})")
    d = ReconstructSettings()
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--prior-method", dest="prior_method", choices=("elbo", "score"), default=d.prior_method,
                   help="the prior's term in the fits (reconstruct --prior-method)")
    p.add_argument("--elbo-draws", type=int, default=d.elbo_draws, help="ELBO draws per image and DPI step")
    p.add_argument("--batch", type=int, default=d.batch, help="flow samples per DPI step (of each ensemble member)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam step size of the DPI fits")
    p.add_argument("--warm-start-kind", dest="warm_start", choices=WARM_STARTS, default=d.warm_start,
                   help="what starts each flow fit (reconstruct --warm-start-kind)")
    p.add_argument("--alpha", type=float, default=d.alpha, help="Renyi order of the fits' objective (1 = reverse KL)")
    p.add_argument("--flow-base", dest="flow_base", choices=FLOW_BASES, default=d.flow_base,
                   help="base Gaussian of each final flow (reconstruct --flow-base)")
    p.add_argument("--flow-basis", dest="flow_basis", choices=BASES, default=d.flow_basis,
                   help="what each diagonal flow acts on: pixels or DCT frequencies (reconstruct --flow-basis)")
    p.add_argument("--laplace-start", dest="laplace_start", choices=LAPLACE_STARTS, default=d.laplace_start,
                   help="where the Laplace-based flows of a case start (reconstruct --laplace-start)")
    p.add_argument("--samples", type=int, default=d.samples)
    p.add_argument("--ensemble", type=int, default=None,
                   help=f"independent flow fits pooled per case (default {d.ensemble} for --method dpi, else 1)")
    p.add_argument("--method", default="dpi", choices=SAMPLING_METHODS,
                   help="inference method of every case (reconstruct --method; the DPI settings above are for dpi)")
    p.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting of the --method baseline (repeatable), as reconstruct --opt")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--device", default="cpu",
                   help="where each case's DPI fits run (cpu, cuda, cuda:N); with a GPU several --jobs share it. Not"
                        " a setting of the run: cases fitted on a GPU and on the CPU may share an --out")
    p.add_argument("--seed", type=int, default=20261201)
    p.add_argument("--rescore", action="store_true",
                   help="score the finished cases anew from their saved samples (ring features with the current"
                        " extractor) without refitting; unfinished cases are run")
    args = p.parse_args()
    args.method_options = parse_options(args.opt)
    case_settings = ReconstructSettings(method=args.method, method_options=args.method_options,
                                        ensemble=args.ensemble, samples=args.samples, device=args.device)
    check_settings(case_settings)  # reconstruct's own checks (method, its settings, ensemble, device), before any work
    args.ensemble = case_settings.ensemble  # None: reconstruct's default for the method
    for name in ("n", "steps", "elbo_draws", "batch", "jobs", "ensemble"):
        if getattr(args, name) < 1:
            raise InterferoError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.samples < 2:
        raise InterferoError(f"--samples must be >= 2, got {args.samples}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise InterferoError(f"--lr must be a finite number > 0, got {args.lr}")
    if not (math.isfinite(args.alpha) and args.alpha >= 0):
        raise InterferoError(f"--alpha must be a finite number >= 0, got {args.alpha}")
    from interfero.arrays import load_array

    arrays = [a.strip() for a in args.arrays.split(",") if a.strip()]
    for a in arrays:
        load_array(a)  # one-line error before any work
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    from posterior.methods import sample_jitter
    from priors.pretrained import load_prior, prior_path, training_law

    args.prior, args.law = prior_path("default").name, training_law("default")  # recorded: a new default is a new run
    prior = load_prior("default", expect_image_size=GEOM.npix)
    args.jitter, args.eps_std = sample_jitter(args.method, args.method_options, prior), prior.eps_std
    jobs = case_jobs({s: truths(s, args.n, args.seed, args.law, prior) for s in sets}, arrays, args)
    settings = {k: getattr(args, k) for k in ("n", "arrays", "sets", "steps", "prior_method", "elbo_draws", "batch",
                                              "lr", "samples", "ensemble", "warm_start", "alpha", "flow_base",
                                              "flow_basis", "laplace_start", "seed", "prior", "law", "method",
                                              "method_options")}
    check_run_settings(Path(args.out), settings)
    results, todo = finished_cases(jobs, args.rescore)

    def report() -> dict:  # after every case: an interrupted run still reports what it finished
        out = summary(sorted(results, key=lambda r: r["case"]), settings, sets, arrays)
        atomic_write_text(args.json, json.dumps(out, indent=2))
        if args.png:
            plot(out, Path(args.png))
        return out

    out = report()
    print(time_left(results, len(todo), args.jobs), file=sys.stderr, flush=True)
    bar = tqdm(total=len(todo), desc="calibration cases", unit="case", dynamic_ncols=True, disable=not todo)
    signal.signal(signal.SIGTERM, _stop)  # a plain `kill` stops the workers as Ctrl-C does
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        try:
            for done, r in enumerate(pool.map(run_case, todo), 1):
                results.append(r)
                head = f"{r['set']} {r['array']} case {r['case']}:"
                if "error" in r:
                    bar.write(f"{head} refused ({r['error']})", file=sys.stderr)
                else:
                    bar.write(f"{head} coverage 68/95 {r['coverage_68']:.2f}/{r['coverage_95']:.2f}, diameter in"
                              f" 68% {r.get('ring_diameter_in68')}, {r['seconds']:.0f} s;"
                              f" {time_left(results, len(todo) - done, args.jobs)}", file=sys.stderr)
                bar.update()
                out = report()
        except BaseException:  # a case held by another run, or an interrupt: no case beyond those handed out
            pool.shutdown(wait=False, cancel_futures=True)
            for worker in mp.active_children():  # the running cases stop too (they resume from their checkpoints)
                worker.terminate()
            raise
        finally:
            bar.close()
    for s in sets:
        for a, r in out[s].items():
            if not r.get("n_cases"):
                print(f"{s:16s} {a:22s} no case finished ({r['n_refused']} refused)")
                continue
            print(f"{s:16s} {a:22s} n={r['n_cases']:3d} pixels 68/95: {r['coverage_68']:.2f}/{r['coverage_95']:.2f}"
                  f" (mean's region {r['coverage_mean_region_68']:.2f}/{r['coverage_mean_region_95']:.2f})"
                  f"  ring diameter 68/95: {_rate(r['ring_diameter_coverage_68'])}"
                  f"/{_rate(r['ring_diameter_coverage_95'])}"
                  f" (jittered truth {_rate(r.get('ring_diameter_jittered_coverage_68'))}"
                  f"/{_rate(r.get('ring_diameter_jittered_coverage_95'))})")
            split = r.get("by_fit_convergence")
            if split:  # whether the misses come with a fit that stalled
                parts = []
                for name, sign in (("reached", "<="), ("stalled", ">")):
                    p = split[name]
                    text = f"{name} (fits' chi^2 {sign} {split['chi2_threshold']:g}): n={p['n_cases']}"
                    if p["n_cases"]:
                        text += (f" pixels {p['coverage_68']:.2f}/{p['coverage_95']:.2f}, ring"
                                 f" {_rate(p['ring_diameter_coverage_68'])}/{_rate(p['ring_diameter_coverage_95'])}")
                    parts.append(text)
                print(f"{'':16s} {'':22s} " + "; ".join(parts))
            own = r.get("chi2_fits_median", {}).get("reached")
            if own and own["n_fits"]:  # within one fit: its samples' data fit against its mean's
                print(f"{'':16s} {'':22s} fits that reached the data (n={own['n_fits']}), own chi^2 of mean / samples: "
                      + ", ".join(f"{k} {own['mean'][k]:.2f} / {own['samples'][k]:.2f}" for k in own["mean"]))
            ring_miss = r.get("ring_diameter_misses_68")
            if ring_miss and ring_miss["n_misses"]:  # near the interval or on another ring size
                w = {k: "-" if v is None else f"{v:.1f}" for k, v in ring_miss["width_median_uas"].items()}
                print(f"{'':16s} {'':22s} ring diameter outside its 68% interval: {ring_miss['n_misses']} of"
                      f" {ring_miss['n_cases']} ({ring_miss['near']} by <= {ring_miss['near_uas']:g} uas,"
                      f" {ring_miss['far']} by > {ring_miss['far_uas']:g} uas, {ring_miss['small']} put small);"
                      f" median interval width {w['hits']} uas where it holds, {w['misses']} uas"
                      " where it misses")
            g = r["goal"]
            missed = [k for k, c in g["checks"].items() if not c["within"]]
            print(f"{'':16s} {'':22s} goal ({g['n_required']} truths, within {g['within']:.2f}):"
                  f" {'met' if g['met'] else 'not met'}"
                  f"{' (outside: ' + ', '.join(missed) + ')' if missed else ''}")


if __name__ == "__main__":
    run_script(main, "calibration")
