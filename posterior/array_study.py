"""Array studies: how the telescope array changes the posterior (the paper's Figure 1).

:func:`array_study` observes one truth (a FITS image, or a draw of the prior)
with each array of a list, reconstructs each observation with the same
settings, and compares the posteriors:

- per array: the mean posterior std (Jy/pixel, averaged over the image) and
  its two parts under Rubin's rules (``mean_within_fit_std_jy``: each flow
  fit's own spread; ``mean_between_fit_std_jy``: the spread between the
  fits' means, zero for one fit), the same total std of the samples blurred
  with the 10 uas circular Gaussian that nxcorr is judged after
  (``mean_std_blur10_jy``: the uncertainty at the scale the arrays resolve,
  without the pixel-scale structure none of them constrains), the mean std
  over the truth's source pixels (``mean_std_source_jy``: the pixels the
  coverage scores, truth >= 10% of its peak after the nxcorr shift; the
  image mean is mostly empty sky, where every array leaves the prior's own
  pixel-scale spread), the ring
  diameter's 68% interval and its width (uas), nxcorr after 10 uas
  blurring against the truth, the closure chi^2, and a rank (1 = best by
  nxcorr after blurring; ties by the smaller mean std);
- per array, a reference for the std: the per-pixel std of the Laplace
  approximation at the posterior mean (``laplace_mean_std_jy``, over the
  image, and ``laplace_mean_std_source_jy``, over the source pixels):
  ``sqrt(diag((P_prior + H)^-1))`` with ``H`` the data's Gauss-Newton
  Hessian and ``P_prior`` the prior's from its score
  (:mod:`posterior.laplace`), what a posterior that is locally Gaussian
  there would give, every correlation between pixels counted (None above
  :data:`posterior.laplace.MAX_PIXELS` pixels);
- one figure (``arrays.png``): the truth, then per array the posterior mean
  (top), its std and the std after 10 uas blurring (each row one colour
  scale for all arrays);
- ``arrays.json`` (``{"arrays": {"<array as given>": {...}}}``) and
  ``arrays.md`` (the ranking table).

Arrays are given as ``interfero simulate --array`` takes them: built-in names
(``EHT2017``, ``EHT2018``, ``ngEHT``) edited with ``+STATION`` / ``-STATION``
(``EHT2017-JCMT-SMT-APEX``), or station-table files. Every observation: the
truth's RA/Dec (Sgr A* by default), 230 GHz, 24 h, 60 s integrations every
10 min, thermal noise seeded by ``seed``. The reconstructions are the
default ones with fits of :data:`STUDY_STEPS` steps (twice the default's):
the arrays differ a lot in how much data they give, and with 1000 steps the
fits of a 13-site array still disagree at closure chi^2 ~1.4; and each
ensemble's fits end in Laplace-based flows started at their pooled mean
(:data:`STUDY_FLOW_BASE`, ``reconstruct --flow-base laplace``): the study
compares posterior widths, and a flow with a diagonal base keeps only each
pixel's conditional spread (a third of the exact per-pixel std on an exact
interferometric Gaussian posterior, ``scripts/validate_flow_base.py``). The total-flux
term is centred on the truth's flux for every array (arrays without
intra-site baselines cannot measure it), unless the settings give one. With
``resume`` each array's reconstruction continues from its checkpoints (a
finished one is only re-sampled), so an interrupted study loses at most one
fit's progress.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from interfero.arrays import load_array, n_sites
from interfero.errors import InterferoError
from interfero.io import ImageGeometry, atomic_write_text, read_fits_image, write_fits_image, write_uvfits
from interfero.regrid import regrid
from interfero.simulate import simulate
from interfero.uvcoverage import ObservingSetup
from interfero.validation import check_output_folder, clear_outputs, make_output_folder

from .metrics import aligned_truth
from .reconstruct import ReconstructSettings, check_settings, reconstruct

STUDY_OUTPUTS = ("arrays.png", "arrays.json", "arrays.md", "truth.fits")
STUDY_STEPS = 2000  # DPI steps per fit: the richest arrays' fits (13 ngEHT sites) need about 2000 to reach chi^2 ~1
STUDY_FLOW_BASE = "laplace"  # each fit's last flow holds the Laplace covariance: the std compared is the posterior's
STD_BLUR_UAS = 10.0  # FWHM of the blur of mean_std_blur10_jy: the one nxcorr_blur10 is judged after


def _folder_name(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", Path(spec).name if Path(spec).exists() else spec)


def prior_draw(prior_name: str, seed: int) -> tuple[np.ndarray, ImageGeometry]:
    """One image of a score prior (reverse SDE, seeded), with its grid."""
    import torch

    from priors.pretrained import load_prior

    prior = load_prior(prior_name)
    g = torch.Generator().manual_seed(seed)
    img = prior.sample(1, generator=g)[0, 0].double().numpy()
    geom = ImageGeometry(img.shape[-1], prior.fov_uas or 160.0)
    return np.clip(img, 0, None), geom


def array_study(truth: str, arrays: list[str], out: str | Path, settings: ReconstructSettings | None = None,
                progress: bool = True, overwrite: bool = False, resume: bool = False, workers: int = 1) -> dict:
    """Runs the study (module docstring); returns what ``arrays.json`` holds. ``workers`` > 1 reconstructs
    that many arrays at once, each in its own process (with one torch thread unless the settings give
    ``threads``); the results do not depend on it."""
    s = settings or ReconstructSettings(steps=STUDY_STEPS, flow_base=STUDY_FLOW_BASE)
    if resume and overwrite:
        raise InterferoError("--resume continues the study in --out, --overwrite replaces it: give one of them")
    out = check_output_folder(out, "--out", STUDY_OUTPUTS + tuple(_folder_name(a) for a in arrays),
                              overwrite or resume)
    if not arrays:
        raise InterferoError("--arrays names no array")
    if workers < 1:
        raise InterferoError(f"--jobs must be >= 1, got {workers}")
    check_settings(s)  # reconstruct's own checks (device, ensemble, ...), before anything is written
    if len(set(arrays)) != len(arrays):
        raise InterferoError("--arrays names an array twice")
    loaded = {a: load_array(a) for a in arrays}  # every array checked before anything runs
    for a, arr in loaded.items():
        if n_sites(arr) < 3:
            raise InterferoError(f"array {a!r} has {n_sites(arr)} sites; closure phases need at least 3")
    if truth.startswith("prior"):
        image, geom = prior_draw(s.prior, s.seed)
    else:
        image, geom = read_fits_image(truth)
    if not image.sum() > 0:
        raise InterferoError("truth image has no positive total flux")
    if s.flux is None:  # arrays without intra-site baselines cannot measure it: the truth's, for every array
        s = replace(s, flux=float(image.sum()))
    clear_outputs(out, STUDY_OUTPUTS)
    make_output_folder(out)
    truth_path = out / "truth.fits"
    write_fits_image(image, geom, truth_path)
    setup = ObservingSetup(ra=geom.ra, dec=geom.dec, source=geom.source)
    rec_geom = ImageGeometry(s.npix, s.fov_uas)
    truth_rec = regrid(image, geom, rec_geom)
    rows: dict[str, dict] = {}
    posts = {}
    jobs = [(a, image, geom, setup, out / _folder_name(a), s, truth_path, overwrite, resume) for a in arrays]
    for (a, *_), m in zip(jobs, _run_arrays(jobs, workers, progress)):
        folder = out / _folder_name(a)
        mean, _ = read_fits_image(folder / "mean.fits")
        std, _ = read_fits_image(folder / "std.fits")
        within, between, blurred = _std_parts(folder / "samples.h5", rec_geom.psize_uas)
        region = aligned_truth(truth_rec, m["nxcorr_shift_px"])[1]
        posts[a] = (mean, std, blurred)
        lap = laplace_reference(folder / "obs.uvfits", mean, s)
        d = m.get("ring", {}).get("diameter_uas")
        rows[a] = {"stations": list(loaded[a].names), "n_sites": n_sites(loaded[a]), "mean_std_jy": float(std.mean()),
                   "mean_within_fit_std_jy": within, "mean_between_fit_std_jy": between,
                   "mean_std_blur10_jy": float(blurred.mean()), "mean_std_source_jy": float(std[region].mean()),
                   "laplace_mean_std_jy": None if lap is None else float(lap.mean()),
                   "laplace_mean_std_source_jy": None if lap is None else float(lap[region].mean()),
                   "nxcorr_blur10": m["nxcorr_blur10"], "nxcorr": m["nxcorr"],
                   "chi2_cphase": m["chi2_cphase"], "chi2_logcamp": m["chi2_logcamp"],
                   "ring_diameter_median_uas": d["median"] if d else None,
                   "ring_diameter_interval_uas": [d["lo68"], d["hi68"]] if d else None,
                   "ring_diameter_interval_width_uas": d["hi68"] - d["lo68"] if d else None,
                   "truth_coverage_68": m.get("truth_coverage_68"), "runtime_s": m["runtime_s"]}
    order = sorted(rows, key=lambda a: (-rows[a]["nxcorr_blur10"], rows[a]["mean_std_jy"]))
    for rank, a in enumerate(order, start=1):
        rows[a]["rank"] = rank
    result = {"truth": truth, "settings": {"steps": s.steps, "samples": s.samples, "seed": s.seed,
                                           "prior": s.prior}, "arrays": rows}
    _plot(truth_rec, posts, rec_geom, rows, out / "arrays.png")
    atomic_write_text(out / "arrays.md", markdown(rows))
    atomic_write_text(out / "arrays.json", json.dumps(result, indent=2))
    return result


def _reconstruct_array(job: tuple, progress: bool) -> dict:
    """Simulates one array's observation of the truth and reconstructs it into its folder; its ``metrics.json``."""
    a, image, geom, setup, folder, s, truth_path, overwrite, resume = job
    arr = load_array(a)
    folder.mkdir(exist_ok=True)
    if progress:
        print(f"array {a}: {len(arr)} stations, {n_sites(arr)} sites", flush=True)
    obs = simulate(image, geom, arr, setup, seed=s.seed)
    write_uvfits(obs, folder / "obs.uvfits")
    return reconstruct(folder / "obs.uvfits", folder, s, truth=truth_path, progress=progress, overwrite=overwrite,
                       resume=resume)


def _parallel_array(job: tuple) -> dict:
    """:func:`_reconstruct_array` in a worker process: one torch thread unless the settings give ``threads``,
    no progress bars (several would interleave); a line when the array is done."""
    import time

    job = list(job)
    if job[5].threads is None:
        job[5] = replace(job[5], threads=1)
    t0 = time.perf_counter()
    m = _reconstruct_array(tuple(job), progress=False)
    print(f"array {job[0]}: reconstructed in {time.perf_counter() - t0:.0f} s", flush=True)
    return m


def _run_arrays(jobs: list[tuple], workers: int, progress: bool) -> list[dict]:
    """The arrays' reconstructions (their ``metrics.json``) in the order given: one after another, or
    ``workers`` at a time in spawned processes; a failure is raised once every array's reconstruction has ended."""
    if workers == 1 or len(jobs) == 1:
        return [_reconstruct_array(job, progress) for job in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if progress:
        print(f"reconstructing {len(jobs)} arrays, {min(workers, len(jobs))} at a time", flush=True)
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_parallel_array, jobs))


def laplace_reference(obs_path: Path, mean: np.ndarray, s: ReconstructSettings) -> np.ndarray | None:
    """The per-pixel std map (Jy/pixel, the mean's shape) of the Laplace approximation of the reconstruction's
    posterior (the observation at ``obs_path``, settings ``s``) at its posterior mean ``mean``: the module
    docstring's reference; None for images of more than :data:`posterior.laplace.MAX_PIXELS` pixels."""
    import contextlib
    import io

    import torch

    from .laplace import MAX_PIXELS, laplace_precision, laplace_std
    from .reconstruct import build_problem, is_smoothed, white_scale

    if mean.size > MAX_PIXELS:
        return None
    with contextlib.redirect_stderr(io.StringIO()):  # the reconstruction printed the problem's warnings already
        _, _, op, prior, flux = build_problem(obs_path, s)
    x0 = torch.tensor(mean, dtype=torch.float64)
    precision = laplace_precision(op, prior, x0, white_scale(s, prior, flux), smoothed=is_smoothed(prior))
    return laplace_std(precision).reshape(mean.shape).numpy()


def _std_parts(samples_h5: Path, psize_uas: float) -> tuple[float, float, np.ndarray]:
    """Pixel means of the posterior std's two parts (``posterior.summary.std_parts``): each fit's own spread
    and the spread between the fits (0 for one fit), and the map of the total std of the samples blurred
    by :data:`STD_BLUR_UAS` (pixels of ``psize_uas``); Jy/pixel."""
    import h5py

    from .metrics import blur_circular
    from .summary import split_fits, std_parts

    with h5py.File(samples_h5, "r") as f:
        samples = f["samples"][:].astype(np.float64)
        sizes = f["fit_sizes"][:] if "fit_sizes" in f else [len(samples)]
    within, between = std_parts(split_fits(samples, sizes))
    planes = samples.reshape(-1, *samples.shape[-2:])
    blurred = np.stack([blur_circular(p, STD_BLUR_UAS, psize_uas) for p in planes]).reshape(samples.shape)
    w_b, b_b = std_parts(split_fits(blurred, sizes))
    return float(within.mean()), float(between.mean()), np.sqrt(w_b**2 + b_b**2).reshape(samples.shape[-2:])


def markdown(rows: dict[str, dict]) -> str:
    lines = ["| rank | array | sites | mean std (Jy/px): total (fits' own / between fits) | mean std, 10 uas blur"
             " (Jy/px) | mean std, source pixels (Jy/px) | Laplace std at the mean: image / source (Jy/px) |"
             " nxcorr (10 uas blur) | ring diameter 68% (uas) | chi^2 cphase / logcamp |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for a in sorted(rows, key=lambda k: rows[k]["rank"]):
        r = rows[a]
        iv = r["ring_diameter_interval_uas"]
        ring = f"{iv[0]:.1f}-{iv[1]:.1f}" if iv else "no ring"
        parts = f"({r['mean_within_fit_std_jy']:.1e} / {r['mean_between_fit_std_jy']:.1e})"
        lap = ("n/a" if r.get("laplace_mean_std_jy") is None
               else f"{r['laplace_mean_std_jy']:.2e} / {r['laplace_mean_std_source_jy']:.2e}")
        lines.append(f"| {r['rank']} | {a} | {r['n_sites']} | {r['mean_std_jy']:.2e} {parts} |"
                     f" {r['mean_std_blur10_jy']:.2e} | {r['mean_std_source_jy']:.2e} | {lap} |"
                     f" {r['nxcorr_blur10']:.3f} | {ring} |"
                     f" {r['chi2_cphase']:.2f} / {r['chi2_logcamp']:.2f} |")
    return "\n".join(lines) + "\n"


def _plot(truth: np.ndarray, posts: dict, geom: ImageGeometry, rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from interfero.plotting import save_figure

    n = len(posts)
    half = geom.fov_uas / 2
    ext = (half, -half, -half, half)
    fig, axes = plt.subplots(3, n + 1, figsize=(3.2 * (n + 1), 9.3), squeeze=False)
    axes[0, 0].imshow(truth, origin="upper", extent=ext, cmap="afmhot")
    axes[0, 0].set_title("truth (regridded)", fontsize=9)
    axes[1, 0].axis("off")
    axes[2, 0].axis("off")
    vmax = max(p[1].max() for p in posts.values())
    vmax_blur = max(p[2].max() for p in posts.values())
    for j, (a, (mean, std, blurred)) in enumerate(posts.items(), start=1):
        axes[0, j].imshow(mean, origin="upper", extent=ext, cmap="afmhot")
        axes[0, j].set_title(f"{a}\nmean, nxcorr {rows[a]['nxcorr_blur10']:.3f}", fontsize=8)
        im = axes[1, j].imshow(std, origin="upper", extent=ext, cmap="viridis", vmin=0, vmax=vmax)
        axes[1, j].set_title(f"std, mean {rows[a]['mean_std_jy']:.1e} Jy/px", fontsize=8)
        im_b = axes[2, j].imshow(blurred, origin="upper", extent=ext, cmap="viridis", vmin=0, vmax=vmax_blur)
        axes[2, j].set_title(f"std after {STD_BLUR_UAS:g} uas blur, mean {rows[a]['mean_std_blur10_jy']:.1e}",
                             fontsize=8)
    for ax in axes.ravel():
        ax.tick_params(labelsize=6)
    fig.colorbar(im, ax=axes[1, 1:].tolist(), fraction=0.02, label="posterior std (Jy/px)")
    fig.colorbar(im_b, ax=axes[2, 1:].tolist(), fraction=0.02, label=f"std, {STD_BLUR_UAS:g} uas blur (Jy/px)")
    save_figure(fig, path)
