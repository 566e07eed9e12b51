"""The main job: black-hole reconstruction with uncertainty from a uvfits file (DPI + a score-based prior).

The prior is a shipped or trained score prior (``prior="default"``) or a classical regulariser
(``"tv"``, ``"mem"``, ``"tv+mem"``: :func:`priors.classical.image_regulariser`, weight ``reg_weight``,
MEM against the flow's starting blob), for comparison with the RML baselines.

:func:`reconstruct` validates everything first (observation, data products,
prior size and field of view, output folder), fits a normalizing-flow
posterior, and writes, each file atomically and the JSON metrics last:

- ``samples.h5``: posterior samples, summaries, loss history, metadata;
- ``mean.fits``, ``std.fits``: ehtim-compatible images (Jy/pixel);
- ``report.png``: mean, std, std/mean, samples, residuals, loss curve;
  ``uv_coverage.png``;
- ``metrics.json``: reduced chi^2 per product of the mean image, total flux,
  timings, what was done to the data (``preparation``: averaging, systematic
  budget, zero-baseline flux, dropped stations; :mod:`interfero.preparation`),
  the ring features of the samples (``ring``: :mod:`posterior.ring`), and with a
  truth image nxcorr (unblurred and blurred) / PSNR / SSIM and the truth's
  coverage by the 68% / 95% intervals, and the truth's log-likelihood rank among the samples'
  (:func:`posterior.metrics.truth_loglik_rank`).

Several observation files (days, bands) of one source make one posterior
(:func:`interfero.preparation.combine_observations`).

The default flow output is the identity (pixels may dip below zero, as the score prior's own ``p_eps``
allows), warm-started from a short non-negative (softplus) fit: see :func:`warm_start_steps`.

DPI checkpoints (``dpi-checkpoint.*``, and ``warm-start/dpi-checkpoint.*`` for the warm start) are written
to the folder while running and kept after it, so an interrupted run continues with ``resume=True`` (CLI:
``--resume``), and a finished one can be extended with a larger ``steps``.

``ensemble`` K > 1 fits K flows independently (seeds ``seed, seed + 1, ...``; the first is the K = 1 fit,
the others checkpoint in ``component-<k>/``) and pools their samples in equal numbers
(:func:`pool_components`), with mean, std and intervals combined by Rubin's rules. One reverse-KL flow
settles on one of the images the data allow, and its intervals hold the truth far less often than their
level; the spread between independent fits restores it. DPI's default is ``ENSEMBLE`` = 3 fits of 1000
steps each (docs/results.md, "Calibration"); the baselines (``method`` other than dpi) are single runs.

Total flux: closure phases and log closure amplitudes do not constrain it, so
a Gaussian total-flux term is added, centred on ``flux`` Jy if given, else on
the zero-baseline flux measured by the data (the median amplitude of the
baselines shorter than ``SHORT_BASELINE`` wavelengths, e.g. ALMA-APEX and
SMA-JCMT); if the observation has no such baseline the user must give it. A given
``flux`` is the compact flux: the intra-site baselines are rescaled to it.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from interfero.errors import InterferoError
from interfero.io import ImageGeometry, read_fits_image, read_uvfits
from interfero.operators import InterferometryOperator
from interfero.plotting import plot_uv_coverage
from interfero.preparation import combine_observations, prepare_observation, zero_baseline_flux
from interfero.regrid import regrid
from interfero.validation import check_memory, check_output_folder, clear_outputs, make_output_folder
from priors.factory import build_prior, prior_kind

from .dpi import CHECKPOINT, DPI, DPIConfig, DPITarget, load_checkpoint, read_checkpoint_record
from .flows import BASES, build_flow
from .laplace import MAX_PIXELS as LAPLACE_MAX_PIXELS
from .laplace import correlated_base, laplace_precision
from .map_estimate import MAPConfig, map_estimate
from .methods import SAMPLING_METHODS, method_config, run_method
from .metrics import (
    blur_circular,
    error_against_std,
    image_metrics,
    interval_coverage,
    nxcorr,
    posterior_region,
    reduced_chi2,
    sample_chi2,
    summarize_sample_chi2,
    truth_loglik_rank,
)
from .problem import InverseProblem
from .report import plot_report, write_fits_summaries, write_json, write_samples_h5
from .ring import ring_samples, summarize_ring
from .summary import Posterior, fitted_samples, summarize, summarize_fits

LAPLACE_STEPS = 300  # default length of the Laplace-based final flow (ReconstructSettings.laplace_steps)
WARM_START_STEPS = 50  # default length of the non-negative fit that starts a flow_output="none" fit
LAPLACE_STARTS = ("pooled", "own")  # ReconstructSettings.laplace_start: where an ensemble's Laplace stages start
FLOW_BASES = ("diagonal", "laplace")  # ReconstructSettings.flow_base: independent base pixels, or a Laplace stage
WARM_STARTS = ("map", "flow", "prior")  # what starts the final flow (ReconstructSettings.warm_start)
PRIOR_START_STEPS = 200  # reverse-SDE steps of the prior draw that starts a fit with warm_start="prior"
MAP_ITERATIONS = 200  # L-BFGS iterations of the "map" warm start
MAP_BLUR_UAS = 10.0  # FWHM of the blur of its MAP image (map_warm_start)
WARM_START_DIR = "warm-start"  # its checkpoint folder inside the output folder
DIAGONAL_DIR = "diagonal-fit"  # checkpoint folder of the diagonal-base fit that a Laplace-based flow follows
COMPONENT_DIR = "component-{k}"  # checkpoint folder of ensemble member k >= 1
ENSEMBLE = 3  # default number of independent DPI fits pooled (module docstring)


@dataclass
class ReconstructSettings:
    """Settings of :func:`reconstruct` (units: pixels, microarcseconds, Jy)."""

    prior: str = "default"
    prior_method: str = "elbo"  # of a score prior: elbo, ode (exact log p) or score (its gradient at eps alone)
    reg_weight: float = 1000.0
    elbo_draws: int = 1  # one draw per image and step: the same bound, half the cost; the steps average it
    products: tuple[str, ...] = ("cphase", "logcamp")
    npix: int = 32
    fov_uas: float = 160.0
    flux: float | None = None
    flux_sigma_frac: float = 0.01
    sys_noise: float | str = "auto"  # fraction of |V|, or auto (interfero.preparation)
    combine_frequencies: bool = False  # several files at different frequencies (bands) may form one posterior
    avg: str = "auto"  # coherent averaging: auto, scan, none or seconds (interfero.preparation)
    steps: int = 1000  # of each ensemble member
    batch: int = 16
    lr: float = 2e-3
    samples: int = 256
    flow_kind: str = "realnvp"
    flow_blocks: int = 8
    flow_output: str | None = None  # None: "none" for score priors, "softplus" for tv / mem / tv+mem
    flow_coupling: str = "sigmoid"
    flow_hidden: int = 32
    flow_layout: str = "auto"  # conv couplings (auto for images) or dense: every pixel sees every other
    flow_basis: str = "pixel"  # posterior.flows.BASES: what a diagonal-base flow acts on: pixels or DCT frequencies
    flow_base: str = "diagonal"  # FLOW_BASES: "laplace" adds a final flow with a correlated base (fit_posterior)
    laplace_start: str = "pooled"  # LAPLACE_STARTS: all at the members' pooled mean, or each at its own fit's
    laplace_steps: int | None = None  # of that final flow (each member); None: min(LAPLACE_STEPS, steps)
    init_fwhm_uas: float = 50.0
    anneal_steps: int = 0
    alpha: float = 1.0  # Renyi order of the final fit's objective (1 = reverse KL; posterior.dpi)
    ensemble: int | None = None  # independent flow fits pooled (pool_components); None: ENSEMBLE for dpi, else 1
    warm_start_steps: int | None = None
    warm_start: str = "flow"  # what starts the final flow: WARM_STARTS (map_warm_start, fit_posterior)
    seed: int = 0
    allow_fov_mismatch: bool = False
    threads: int | None = None
    device: str = "cpu"  # where the DPI fits' steps run: cpu, cuda, cuda:N (check_device)
    method: str = "dpi"  # dpi (the flow fit below) or a baseline of posterior.methods (dps, ald, pnp-dm, ...)
    max_chi2: float = 1000.0  # a fit whose reduced chi^2 of any product exceeds this is refused
    method_options: dict = field(default_factory=dict)  # the baseline's settings (posterior.methods), by name

    def __post_init__(self) -> None:
        if self.flow_output is None:  # a classical prior's flow stays positive; a score prior's p_eps needs both signs
            self.flow_output = "softplus" if prior_kind(self.prior).positive_images else "none"
        if self.laplace_steps is None:
            self.laplace_steps = min(LAPLACE_STEPS, self.steps)
        if self.ensemble is None:  # the baselines are single runs
            self.ensemble = ENSEMBLE if self.method == "dpi" else 1


def gaussian_blob(geom: ImageGeometry, flux: float, fwhm_uas: float) -> torch.Tensor:
    """A centred circular Gaussian of total ``flux`` Jy, ``(1, N, N)`` Jy/pixel (the flow's initial mean)."""
    c = (np.arange(geom.npix) + 0.5 - geom.npix / 2) * geom.psize_uas
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    img = np.exp(-0.5 * r2 / (fwhm_uas / 2.3548200450309493) ** 2)
    return torch.tensor(flux * img / img.sum(), dtype=torch.float32)[None]


def truth_prior_percentile(prior, truth: np.ndarray, seed: int = 0, n_reference: int = 32) -> dict:
    """Is the truth typical for the (score) prior? Its ELBO percentile among fresh training draws
    (priors.ood), as ``truth_prior_percentile`` (0: below all of them, the prior will pull away from the
    truth) and the ELBOs; empty if the prior does not record its training set."""
    from priors.ood import compare_to_training

    if not (prior.training_data and "kind" in prior.training_data):
        return {}
    elbo_prior = prior.with_estimator(method="elbo", elbo={"draws": 16})  # same network, not reloaded
    cmp = compare_to_training(elbo_prior, truth[None, None], n_reference=n_reference, seed=seed)
    return {"truth_prior_percentile": float(cmp.percentile[0]), "truth_prior_elbo": float(cmp.logp[0]),
            "prior_reference_elbo": cmp.as_dict()["reference_logp"] | {"n": int(cmp.reference.size)}}


# what a finished reconstruct / restore leaves in its folder
RUN_OUTPUTS = ("metrics.json", "samples.h5", "mean.fits", "std.fits", "measurement.fits", "report.png",
               "uv_coverage.png")
CHECKPOINT_FILES = (f"{CHECKPOINT}*", f".{CHECKPOINT}*")  # tensors, record, and interrupted writes
RUN_CHECKPOINTS = (*CHECKPOINT_FILES, WARM_START_DIR, COMPONENT_DIR.format(k="*"))


def fit_folders(out: Path, ensemble: int) -> list[Path]:
    """Checkpoint folders of the final fits of the ensemble members (the first is ``out`` itself)."""
    return [out] + [out / COMPONENT_DIR.format(k=k) for k in range(1, ensemble)]


def check_run_folder(out: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """The output folder of ``reconstruct`` / ``restore``, checked before any work: creatable and writable,
    and holding no earlier run's results or checkpoints unless ``resume`` (continue them) or ``overwrite``
    (replace them). Creates nothing."""
    if resume and overwrite:
        raise InterferoError("--resume continues the run in --out, --overwrite replaces it: give one of them")
    return check_output_folder(out, "--out", RUN_OUTPUTS + RUN_CHECKPOINTS, overwrite or resume)


def open_run_folder(out: Path, overwrite: bool = False, resume: bool = False) -> bool:
    """Creates ``out``; removes an earlier run's results (and, with ``overwrite``, its checkpoints), so no
    result of another run is ever left beside this one's. True if it created the folder."""
    created = not out.exists()
    clear_outputs(out, RUN_OUTPUTS)
    if overwrite and not resume:
        comp = COMPONENT_DIR.format(k="*")
        clear_outputs(out, tuple(f"{d}{p}" for d in ("", f"{WARM_START_DIR}/", f"{comp}/", f"{comp}/{WARM_START_DIR}/")
                                 for p in CHECKPOINT_FILES))
    make_output_folder(out)
    return created


def discard_if_empty(out: Path, created: bool) -> None:
    """Removes an output folder this run created when a refusal left it empty (nothing written)."""
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _residuals(op: InterferometryOperator, x: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        pred = op(x)
    out = {}
    for k in op.products:
        r = pred[k][0] - op.data[k][0]
        if k == "cphase":
            r = torch.atan2(torch.sin(r), torch.cos(r))
        r = r / op.sigmas[k].to(r.real.dtype)
        out[k] = (r.abs() if r.is_complex() else r).numpy()
    return out


def check_total_flux(total: float, flux: float, flux_sigma: float, out: Path, method: str = "dpi") -> None:
    """Refuses a posterior whose mean total flux (Jy) is off the flux term's ``flux +- flux_sigma`` Jy by more
    than ``max(flux / 2, 10 flux_sigma)``: a fit that ran away with finite but meaningless images (a flow that
    nearly overflowed), never a posterior. Priors may pull the flux by some per cent (MEM does), not by 50%."""
    if not (math.isfinite(total) and abs(total - flux) <= max(0.5 * flux, 10 * flux_sigma)):
        what = (f"DPI fit diverged: posterior mean total flux {total:.4g} Jy" if method == "dpi" else
                f"{method} did not converge: mean total flux {total:.4g} Jy")
        hint = ("try a smaller --lr (and the bounded --coupling-scale sigmoid, the default); checkpoint kept in"
                f" {out}" if method == "dpi" else "give it more steps or a smaller step size (--opt); nothing written")
        raise InterferoError(f"{what}, the flux term asks {flux:.4g} +- {flux_sigma:.2g} Jy; {hint}")


def image_chi2(op: InterferometryOperator, image: np.ndarray) -> dict[str, float]:
    """Reduced chi^2 per data product (``chi2_<product>``) of one image (Jy/pixel, any shape of its pixels)."""
    return reduced_chi2(op, torch.tensor(np.asarray(image), dtype=torch.float32).reshape(1, *op.image_shape))


def check_data_fit(op: InterferometryOperator, mean: np.ndarray, max_chi2: float, out: Path,
                   method: str = "dpi", runs_chi2: dict | None = None) -> dict[str, float]:
    """The reduced chi^2 per data product of a posterior mean (``chi2_<product>``), refusing one above
    ``max_chi2`` (default 1000) on any product: a fit that did not converge, or data the model cannot
    describe at all; never a result to write. Sound fits of real data sit near 1; poorly converged
    baselines at tens to hundreds. With ``runs_chi2`` (a sampling baseline's independent runs:
    :func:`~posterior.metrics.summarize_sample_chi2` of them) the runs' median is judged instead: runs that
    each fit the data but differ in shape have a mean that fits none (:func:`fits_disagree_warning`)."""
    chi2 = image_chi2(op, mean)
    judged = chi2 if runs_chi2 is None else {f"chi2_{p}": v["median"] for p, v in runs_chi2.items()}
    bad = {k[5:]: v for k, v in judged.items() if not (math.isfinite(v) and v <= max_chi2)}
    if bad:
        shown = ", ".join(f"{k} {v:.3g}" for k, v in bad.items())
        whose = "" if runs_chi2 is None else " (the runs' median)"
        kept = f"checkpoint kept in {out}" if method == "dpi" else "nothing written"
        raise InterferoError(f"{method} fit refused: reduced chi^2 {shown}{whose} is above --max-chi2 {max_chi2:g}"
                             f" (the fit did not converge, or the model cannot describe these data); {kept}")
    return chi2


INIT_SPREAD = 0.5  # starting spread of a flow with a diagonal base, in units of its pixel scale flux / npix^2


def reconstruction_flow(s: ReconstructSettings, geom: ImageGeometry, flux: float, init: torch.Tensor | None = None,
                        base: tuple[torch.Tensor, torch.Tensor, float] | None = None):
    """The flow of a reconstruction: ``flow_kind`` with ``flow_blocks`` couplings of ``flow_hidden`` units in
    ``flow_layout`` (conv or dense, :func:`posterior.flows.build_flow`) (scale map ``flow_coupling``;
    the default ``"sigmoid"`` is bounded, see docs/posterior.md), output transform ``flow_output``, started
    near ``init`` (``(1, npix, npix)``, Jy/pixel; default a ``init_fwhm_uas`` Gaussian blob of ``flux`` Jy),
    pixel scale ``flux / npix^2`` Jy. With ``base = (V, log_gain, std)`` (:func:`laplace_base`) its base is
    correlated (in pixels) and starts with spread ``std`` Jy per pixel; else diagonal with spread
    :data:`INIT_SPREAD`, over ``flow_basis`` (pixels or orthonormal DCT coefficients)."""
    init = gaussian_blob(geom, flux, s.init_fwhm_uas) if init is None else init.detach().cpu()
    scale = flux / s.npix**2
    spread = INIT_SPREAD if base is None else base[2] / scale
    return build_flow((1, s.npix, s.npix), kind=s.flow_kind, layout=s.flow_layout, blocks=s.flow_blocks,
                      hidden=s.flow_hidden,
                      output=s.flow_output, coupling_scale=s.flow_coupling, scale=scale, init=init,
                      init_spread=spread, seed=s.seed, base=None if base is None else base[:2],
                      basis=s.flow_basis if base is None else "pixel").to(s.device)


def check_device(name: str) -> torch.device:
    """The torch device ``name`` (``cpu``, ``cuda``, ``cuda:N``), or a one-line error when torch does not know it,
    this machine has no such device, or it is another kind (Apple's MPS has no float64, which the operator's
    constants are kept in)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InterferoError(f"unknown --device {name!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InterferoError(f"--device {name}: this machine has no CUDA GPU that torch can use (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InterferoError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type != "cpu":
        raise InterferoError(f"unsupported --device {name!r} (use cpu, cuda or cuda:N)")
    return device


@contextmanager
def on_cpu(*modules: torch.nn.Module):
    """Runs the block with ``modules`` (the operator, the prior) on the CPU and puts them back where they were:
    the one-off computations between a GPU fit's stages (a prior draw, the MAP start, the Laplace Hessian)
    run on the CPU as they do in a CPU run."""
    where = [next(iter(m.buffers()), next(iter(m.parameters()), torch.empty(0))).device for m in modules]
    for m in modules:
        m.cpu()
    try:
        yield
    finally:
        for m, device in zip(modules, where):
            m.to(device)


def white_scale(s: ReconstructSettings, prior, flux: float) -> float:
    """The white scale of a Laplace approximation, Jy/pixel: a score prior's jitter
    :attr:`~priors.score_prior.ScorePrior.eps_std` (its density ``p_eps`` is smoothed by it), else
    ``INIT_SPREAD`` pixel scales ``flux / npix^2``."""
    return float(getattr(prior, "eps_std", 0.0)) or INIT_SPREAD * flux / s.npix**2


def is_smoothed(prior) -> bool:
    """Whether ``prior``'s density is a law smoothed by white noise of its ``eps_std`` (a score prior)."""
    return float(getattr(prior, "eps_std", 0.0)) > 0


def laplace_base(s: ReconstructSettings, flux: float, op, prior, x0: torch.Tensor,
                 resume_from: Path | None = None) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """The Laplace-based final flow's correlated base (None unless :func:`laplace_stage`): the eigenvectors
    and gains of the Laplace covariance ``(P_prior + H)^-1`` at ``x0`` (:mod:`posterior.laplace`: ``H`` the
    data's Gauss-Newton Hessian, ``P_prior`` the prior's from its score), relative to the white scale ``s``
    (a score prior's jitter :attr:`~priors.score_prior.ScorePrior.eps_std`, else ``INIT_SPREAD`` pixel
    scales), and ``s``. A fit resumed from the checkpoint folder ``resume_from`` gets placeholders of the
    checkpoint's rank (its saved directions replace them)."""
    if not laplace_stage(s):
        return None
    std = white_scale(s, prior, flux)
    record = read_checkpoint_record(resume_from) if resume_from is not None else None
    if record is not None and "base_rank" in record["flow"]:
        rank = int(record["flow"]["base_rank"])
        vecs = torch.zeros(s.npix**2, rank)
        vecs[:rank, :rank] = torch.eye(rank)
        return vecs, torch.zeros(rank), std
    with on_cpu(op, prior):
        vecs, log_gain = correlated_base(laplace_precision(op, prior, x0.detach().cpu(), std,
                                                           smoothed=is_smoothed(prior)), std)
    return vecs.float(), log_gain.float(), std


def warm_start_steps(s: ReconstructSettings) -> int:
    """Steps of the non-negative (softplus) fit whose posterior mean starts the final flow: ``warm_start_steps``
    if set, else ``min(50, steps)`` for ``flow_output="none"`` and 0 (no warm start) otherwise.

    Why: an output that lets pixels go negative also lets the fit lower a uniform pedestal under the
    image, which changes only the shortest baselines. From a featureless blob the closure amplitudes of the
    intra-site baselines (ALMA-APEX, SMA-JCMT) pull that way far harder than the 1% flux term pulls back, and
    the fit ran to a negative-flux image it never left (log-likelihood -1.5e6 on the demo, refused by
    :func:`check_total_flux`). Started from a non-negative fit that already explains the data, the pedestal
    no longer pays, and the final fit keeps the flux (docs/posterior.md, "Warm start")."""
    if s.warm_start_steps is not None:
        return int(s.warm_start_steps)
    return min(WARM_START_STEPS, s.steps) if s.flow_output == "none" else 0


def prior_draw_start(s: ReconstructSettings, flux: float, prior) -> torch.Tensor:
    """The image that starts a fit's warm start with ``warm_start="prior"``: one draw of the score prior
    (reverse SDE, :data:`PRIOR_START_STEPS` steps, seeded by ``s.seed``, so each ensemble member starts at its
    own draw), negative pixels set to 0 and scaled to ``flux`` Jy; ``(1, npix, npix)`` Jy/pixel.

    Why: from one shared blob the fits of an ensemble tend to settle near one another, so the spread between
    them (Rubin's between-fit variance) measures the optimiser's noise more than the posterior's width. Starts
    spread as the prior is, wider than the posterior, are the overdispersed starts that a between-run variance
    needs to reflect the posterior (Gelman & Rubin 1992)."""
    g = torch.Generator().manual_seed(int(s.seed))
    with on_cpu(prior):  # the same draw whatever the fit's device
        draw = prior.sample(1, steps=PRIOR_START_STEPS, generator=g)[0].clamp_min(0.0)
    total = float(draw.sum())
    if not total > 0:
        raise InterferoError("the prior draw that starts the fit has no positive flux; use --warm-start-kind flow")
    return (draw * (flux / total)).float()


def map_warm_start(s: ReconstructSettings, geom: ImageGeometry, flux: float, op, prior) -> torch.Tensor:
    """The image that starts the final flow with ``warm_start="map"``: the MAP image (:mod:`posterior.map_estimate`:
    L-BFGS over log-pixels from the Gaussian blob, :data:`MAP_ITERATIONS`, the prior's ELBO with draws fixed by
    ``seed``) blurred by :data:`MAP_BLUR_UAS`; ``(1, npix, npix)`` Jy/pixel, positive.

    Why blurred: the MAP of a fixed-draw ELBO fits the data with isolated bright pixels the draws happen to
    tolerate; the flow would keep them. Blurred, it keeps the source's size, shape and position, which is what
    the flow cannot find in 1000 steps from the blob on some sources (it stalls in striped images at chi^2 3-20)."""
    with on_cpu(op, prior):
        problem = InverseProblem(op, op.data, prior, init=gaussian_blob(geom, flux, s.init_fwhm_uas)[None])
        x = map_estimate(problem, MAPConfig(iterations=MAP_ITERATIONS, seed=s.seed, transform="log")).mean
    x = blur_circular(np.asarray(x, dtype=np.float64).reshape(s.npix, s.npix), MAP_BLUR_UAS, geom.psize_uas)
    return torch.tensor(x, dtype=torch.float32)[None]


@dataclass
class PosteriorFit:
    """A reconstruction's DPI fits: the optional non-negative ``warm`` start, the ``mode`` fit (a flow with a
    diagonal base, which finds where the posterior lies) when a Laplace-based flow follows it, and the ``final``
    flow (the posterior)."""

    final: DPI
    warm: DPI | None = None
    start: str = "blob"  # where the first identity-output flow started: "blob", "flow" (the warm fit's mean), "map"
    # or "prior" (the warm fit's mean from a prior draw, or the draw itself without a warm fit)
    start_seconds: float = 0.0  # of the MAP start
    mode: DPI | None = None

    @property
    def stages(self) -> list[DPI]:
        return [r for r in (self.warm, self.mode, self.final) if r is not None]

    @property
    def history(self) -> list[dict]:
        """Loss history of the fits, steps counted from the first; ``stage`` 0 = warm start, 1 = the (diagonal)
        flow from its mean, 2 = the Laplace-based final flow."""
        hist, offset = [], 0
        for stage, fit in ((0, self.warm), (1, self.mode if self.mode is not None else self.final),
                           (2, self.final if self.mode is not None else None)):
            if fit is not None:
                hist += [h | {"stage": float(stage), "step": h["step"] + offset} for h in fit.history]
                offset += fit.step
        return hist

    @property
    def warm_steps(self) -> int:
        return self.warm.step if self.warm is not None else 0

    @property
    def diagonal_fit(self) -> DPI:
        """The fit with the diagonal base (the final one unless a Laplace-based flow followed it)."""
        return self.mode if self.mode is not None else self.final

    @property
    def laplace_steps(self) -> int:
        return self.final.step if self.mode is not None else 0

    @property
    def seconds(self) -> float:
        return self.start_seconds + sum(r.seconds for r in self.stages)

    @property
    def skipped(self) -> int:
        return sum(r.skipped for r in self.stages)

    @property
    def rollbacks(self) -> int:
        return sum(r.rollbacks for r in self.stages)


def laplace_stage(s: ReconstructSettings) -> bool:
    """Whether a Laplace-based flow follows the diagonal fit (``flow_base="laplace"``, ``laplace_steps > 0``, a
    flow whose latent is the image: ``flow_output="none"``)."""
    return s.flow_base == "laplace" and s.laplace_steps > 0 and s.flow_output == "none"


def _dpi_config(s: ReconstructSettings, steps: int, anneal: int, alpha: float = 1.0) -> DPIConfig:
    return DPIConfig(steps=steps, batch=s.batch, lr=s.lr, n_samples=s.samples, seed=s.seed, anneal_steps=anneal,
                     alpha=alpha, ckpt_every=max(10, min(100, steps // 5)))


def _staged(callback, first_step: int):
    return None if callback is None else (lambda dpi, terms: callback(dpi, terms, first_step))


def fit_posterior(s: ReconstructSettings, geom: ImageGeometry, flux: float, op, prior, out: Path | None = None,
                  resume: bool = False, progress: bool = True, callback=None) -> PosteriorFit:
    """Fits the reconstruction's flow posterior: :func:`fit_mode`, then with :func:`laplace_stage` a last flow
    (:func:`fit_laplace`) started at the diagonal fit's own mean (:func:`mode_mean`): the posterior.
    Checkpoints go to ``out`` (the final fit), ``out/diagonal-fit`` (the diagonal fit when a Laplace stage
    follows) and ``out/warm-start``; with ``resume`` all continue; once a later fit has a checkpoint the
    earlier ones are not extended, whatever ``steps`` now implies. ``callback(dpi, terms, first_step)`` is
    called after every step of any fit (``first_step``: the global step the fit started at)."""
    mode = fit_mode(s, geom, flux, op, prior, out, resume, progress, callback)
    if not laplace_stage(s):
        return mode
    return fit_laplace(s, geom, flux, op, prior, mode, mode_mean(mode, s.seed), out, resume, progress, callback)


def fit_mode(s: ReconstructSettings, geom: ImageGeometry, flux: float, op, prior, out: Path | None = None,
             resume: bool = False, progress: bool = True, callback=None) -> PosteriorFit:
    """The fits before any Laplace stage (the returned fit's ``final``): with a warm start
    (:func:`warm_start_steps`) first a softplus flow from the Gaussian blob, then a flow started at its
    posterior mean (256 samples, seeded), or with ``warm_start="map"`` at :func:`map_warm_start`. That flow
    has a diagonal base: it finds where the posterior lies but keeps per-pixel conditional variances
    (docs/posterior.md). ``anneal_steps`` ramps the data weight of the first fit. Checkpoints and ``resume``
    as in :func:`fit_posterior`."""
    k = warm_start_steps(s)
    laplace = laplace_stage(s)
    diag_out = None if out is None else (out / DIAGONAL_DIR if laplace else out)

    def begun(folder: Path | None) -> dict | None:
        return read_checkpoint_record(folder) if resume and folder is not None else None

    final_begun = begun(out) is not None
    diag_record = begun(diag_out)
    diag_steps = s.steps if not (laplace and final_begun and diag_record) else int(diag_record["step"])
    if diag_record is not None and k > 0 and s.warm_start == "flow":
        done = begun(out / WARM_START_DIR)
        k = k if done is None else int(done["step"])  # the diagonal fit already started from this warm start
    target = DPITarget(op, op.data, prior)
    warm, init, start, map_seconds = None, None, "blob", 0.0
    if k > 0 and s.warm_start == "map":  # the flow's start is in its checkpoint: a resumed fit needs no MAP
        t0 = time.perf_counter()
        init, k, start = (None if diag_record else map_warm_start(s, geom, flux, op, prior)), 0, "map"
        map_seconds = time.perf_counter() - t0
    elif k > 0:
        start = s.warm_start  # flow: from the blob; prior: from a draw of the prior
        ws = replace(s, flow_output="softplus", flow_basis="pixel")  # a short positive fit: only its mean is used
        first = prior_draw_start(s, flux, prior) if s.warm_start == "prior" else None
        torch.manual_seed(s.seed)
        warm = DPI(reconstruction_flow(ws, geom, flux, first), target, _dpi_config(s, k, s.anneal_steps),
                   out=None if out is None else out / WARM_START_DIR, resume=resume, progress=progress,
                   callback=_staged(callback, 0)).fit()
        torch.manual_seed(s.seed)
        init = warm.sample(256)[0].mean(0)
    elif s.warm_start == "prior":  # no warm fit: the flow starts at the draw itself (a resumed one: in its checkpoint)
        init, start = (None if diag_record else prior_draw_start(s, flux, prior)), "prior"
    torch.manual_seed(s.seed)
    diag = DPI(reconstruction_flow(s, geom, flux, init), target,
               _dpi_config(s, diag_steps, 0 if k else s.anneal_steps, 1.0 if laplace else s.alpha),
               out=diag_out, resume=resume, progress=progress, callback=_staged(callback, k)).fit()
    return PosteriorFit(diag, warm, start, map_seconds)


def mode_mean(mode: PosteriorFit, seed: int) -> torch.Tensor:
    """The mean image of :func:`fit_mode`'s flow (256 samples, seeded by ``seed``), where a Laplace stage of
    that fit alone starts; ``(1, npix, npix)`` Jy/pixel."""
    torch.manual_seed(seed)
    return mode.final.sample(256)[0].mean(0).detach().cpu()


def fit_laplace(s: ReconstructSettings, geom: ImageGeometry, flux: float, op, prior, mode: PosteriorFit,
                x0: torch.Tensor, out: Path | None = None, resume: bool = False, progress: bool = True,
                callback=None) -> PosteriorFit:
    """The Laplace-based final flow after :func:`fit_mode`'s ``mode``: started at the image ``x0``
    (``(1, npix, npix)`` Jy/pixel) with the correlated base of :func:`laplace_base` there, for
    ``laplace_steps``; checkpoints in ``out``. Returns all of the reconstruction's fits."""
    final_begun = resume and out is not None and read_checkpoint_record(out) is not None
    base = laplace_base(s, flux, op, prior, x0, resume_from=out if final_begun else None)
    torch.manual_seed(s.seed)
    final = DPI(reconstruction_flow(s, geom, flux, x0, base), DPITarget(op, op.data, prior),
                _dpi_config(s, s.laplace_steps, 0, s.alpha), out=out, resume=resume, progress=progress,
                callback=_staged(callback, mode.warm_steps + mode.final.step)).fit()
    return PosteriorFit(final, mode.warm, mode.start, mode.start_seconds, mode=mode.final)


def prior_method_name(s: ReconstructSettings) -> str:
    """How the prior's log p is computed: the score prior's estimator, or the classical regulariser's weight."""
    return f"closed form, weight {s.reg_weight:g}" if prior_kind(s.prior).classical else s.prior_method


def check_settings(s: ReconstructSettings) -> None:
    """The checks of the settings alone (one-line errors), before any file is read."""
    if s.steps < 1:
        raise InterferoError(f"--steps must be >= 1, got {s.steps}")
    if s.warm_start_steps is not None and s.warm_start_steps < 0:
        raise InterferoError(f"--warm-start must be >= 0 steps, got {s.warm_start_steps}")
    if s.flow_base not in FLOW_BASES:
        raise InterferoError(f"unknown --flow-base {s.flow_base!r} (choose from {', '.join(FLOW_BASES)})")
    if s.flow_basis not in BASES:
        raise InterferoError(f"unknown --flow-basis {s.flow_basis!r} (choose from {', '.join(BASES)})")
    if s.laplace_start not in LAPLACE_STARTS:
        raise InterferoError(f"unknown --laplace-start {s.laplace_start!r} (choose from {', '.join(LAPLACE_STARTS)})")
    if s.laplace_steps < 0:
        raise InterferoError(f"--laplace-steps must be >= 0, got {s.laplace_steps}")
    if laplace_stage(s) and s.flow_kind == "glow" and s.flow_layout != "dense":
        raise InterferoError("--flow-base laplace needs --flow realnvp or --flow-layout dense (a conv glow starts with"
                             " random 1x1 convolutions); use --flow-base diagonal with a conv glow")
    if laplace_stage(s) and s.npix**2 > LAPLACE_MAX_PIXELS:
        raise InterferoError(f"--flow-base laplace needs a dense Hessian over the pixels: at most {LAPLACE_MAX_PIXELS}"
                             f" ({int(LAPLACE_MAX_PIXELS**0.5)}x{int(LAPLACE_MAX_PIXELS**0.5)}), got {s.npix}x{s.npix};"
                             " use --flow-base diagonal")
    if s.prior_method == "score" and s.alpha != 1.0:
        raise InterferoError(f"--prior-method score gives the prior's gradient only; --alpha {s.alpha:g} needs its"
                             " values (use --prior-method elbo)")
    if s.warm_start not in WARM_STARTS:
        raise InterferoError(f"unknown --warm-start-kind {s.warm_start!r} (choose from {', '.join(WARM_STARTS)})")
    if s.warm_start == "prior" and prior_kind(s.prior).classical:
        raise InterferoError(f"--warm-start-kind prior starts each fit at a draw of a score prior; --prior {s.prior}"
                             " has none (use flow or map)")
    if s.samples < 2:
        raise InterferoError(f"--samples must be >= 2, got {s.samples}")
    check_memory(32.0 * s.samples * s.npix**2, f"--samples {s.samples} images of {s.npix}x{s.npix}")
    # one step: the flow's activations (about 8 maps of hidden units per block and image, kept for backward)
    # and the score network's (about 60 maps of 32 channels per ELBO draw and image)
    check_memory(4.0 * s.batch * s.npix**2 * (8 * s.flow_blocks * s.flow_hidden + 60 * 32 * s.elbo_draws),
                 f"a step with --batch {s.batch}, --blocks {s.flow_blocks} and --elbo-draws {s.elbo_draws}")
    if s.flow_layout == "dense":  # weights, gradients and two Adam moments of MLPs over all pixels (and LU maps)
        d = s.npix**2
        per_block = 4 * d * s.flow_hidden + 2 * s.flow_hidden**2 + (d * d if s.flow_kind == "glow" else 0)
        check_memory(16.0 * s.flow_blocks * per_block,
                     f"a dense flow of {s.flow_blocks} blocks over {s.npix}x{s.npix} pixels")
    if s.method != "dpi" or s.method_options:
        method_config(s.method, s.method_options)  # unknown method or settings: refused before any work
    if s.ensemble < 1 or (s.ensemble > 1 and s.method != "dpi"):
        raise InterferoError(f"--ensemble must be >= 1 and is for --method dpi only, got {s.ensemble} with"
                             f" --method {s.method}")
    if check_device(s.device).type != "cpu" and s.method != "dpi":
        raise InterferoError(f"--device {s.device} is for --method dpi only; --method {s.method} runs on the CPU")
    if s.samples < 2 * s.ensemble:
        raise InterferoError(f"--samples {s.samples} is too few for --ensemble {s.ensemble}: each member needs 2")


def build_problem(obs_path, s: ReconstructSettings):
    """Observation, geometry, operator, prior and total flux after all input checks."""
    check_settings(s)
    geom = ImageGeometry(s.npix, s.fov_uas)
    paths = [obs_path] if isinstance(obs_path, (str, Path)) else list(obs_path)
    prepared = [prepare_observation(read_uvfits(p), s.avg, s.sys_noise, compact_flux=s.flux) for p in paths]
    obs = combine_observations([o for o, _ in prepared], allow_frequencies=s.combine_frequencies)
    obs = replace(obs, meta=obs.meta | {"preparation": {str(p): r for p, (_, r) in zip(paths, prepared)}})
    closures = obs.closures
    if "cphase" in s.products and closures.n_cphase == 0:
        raise InterferoError(f"{obs_path}: no closure phases (needs 3 stations observing at the same time)")
    if "logcamp" in s.products and len(closures.quad_rows) == 0:
        raise InterferoError(f"{obs_path}: no log closure amplitudes (needs 4 stations observing at the same time)")
    flux = s.flux if s.flux is not None else zero_baseline_flux(obs)
    if not (math.isfinite(flux) and flux > 0):
        raise InterferoError(f"total flux must be > 0 Jy, got {flux}")
    # a classical prior is flux-normalised, MEM against the starting blob
    prior = build_prior(prior_kind(s.prior), reference=gaussian_blob(geom, flux, s.init_fwhm_uas),
                        weight=s.reg_weight, method=s.prior_method, expect_image_size=s.npix,
                        elbo={"draws": s.elbo_draws, "importance": True})
    warnings: list[str] = []
    if prior.fov_uas is not None and not math.isclose(prior.fov_uas, s.fov_uas, rel_tol=1e-6):
        msg = (f"prior {prior.name} was trained on a {prior.fov_uas:g} uas field of view, not {s.fov_uas:g} uas:"
               f" its images would be rescaled on the sky (use --fov {prior.fov_uas:g})")
        if not s.allow_fov_mismatch:
            raise InterferoError(msg + " or pass --allow-fov-mismatch")
        warnings.append(msg)
    warnings += prior_mismatch_warnings(obs.rf, flux, prior)
    for line in warnings:
        print(f"interfero reconstruct: warning: {line}", file=sys.stderr)
    obs = replace(obs, meta=obs.meta | {"warnings": warnings})  # metrics.json records them too
    op = InterferometryOperator(obs, geom, products=s.products, total_flux=flux, flux_sigma=s.flux_sigma_frac * flux)
    return obs, geom, op, prior, flux


PRIOR_FREQUENCY_HZ = 230e9  # the synthetic black holes are drawn as the EHT sees them at 1.3 mm


def prior_mismatch_warnings(rf_hz: float, flux_jy: float, prior) -> list[str]:
    """Where the data and a score prior trained on synthetic black holes disagree (one line each; warnings,
    not refusals): an observing frequency far from 230 GHz, a total flux outside the training images'."""
    data = prior.training_data or {}
    if data.get("kind") != "blackholes":
        return []
    from priors.datasets.blackholes import flux_range

    out = []
    if abs(rf_hz / PRIOR_FREQUENCY_HZ - 1) > 0.1:
        out.append(f"the data are at {rf_hz / 1e9:.4g} GHz; prior {prior.name} was trained on black holes as seen at"
                   f" {PRIOR_FREQUENCY_HZ / 1e9:.0f} GHz (rings of about 40 uas), and a source looks different at"
                   " other frequencies")
    lo, hi = flux_range(data.get("law", "v1"))
    if not lo <= flux_jy <= hi:
        out.append(f"total flux {flux_jy:.3g} Jy is outside the {lo:.2g}-{hi:.2g} Jy of prior {prior.name}'s training"
                   " images (set it with --flux if the zero-baseline estimate is off)")
    return out


def pool_components(posteriors: list[Posterior], align: bool, misfit=None) -> tuple[Posterior, list[list[int]]]:
    """The equal-weight mixture of ensemble members' posteriors (their samples pooled; each member's
    count should be equal or differ by one). With ``align`` (data that do not fix the absolute position:
    closure phases, closure and plain amplitudes) each member's samples are first moved by whole pixels
    onto the first member's position (a whole-pixel move changes no closure quantity of emission inside
    the field, though the move is circular: flux at one edge re-enters at the other; interpolating a
    fraction of a pixel would smooth the images and spoil their fit to the longest baselines), so the
    pooled spread is that of the images, not of their positions (up to half a pixel). The move is the
    member mean's :func:`~posterior.metrics.nxcorr` shift against the first member's mean, rounded; with
    ``misfit`` (a function of an image ``(C, H, W)``, lower is better: the summed reduced chi^2 of the
    data) it is the one of the nine moves within a pixel of that which gives the mean of the members
    aligned so far, this one included, the lowest misfit. Two means half a pixel apart have no
    best whole-pixel match by correlation, and the average of a badly registered pair fits
    high-S/N closure amplitudes far worse than either image does. The mean, std and intervals combine
    the members by Rubin's rules (:func:`~posterior.summary.summarize_fits`). Returns the pooled
    posterior (no ``log_q``: the pooled samples have no single flow density) and each member's shift
    ``(dy, dx)`` in pixels."""
    shifts = member_shifts([post.mean for post in posteriors], align, misfit)
    pooled = [np.roll(post.samples, (-sh[0], -sh[1]), axis=(-2, -1)) for post, sh in zip(posteriors, shifts)]
    return summarize_fits(pooled), shifts


def member_shifts(means: list[np.ndarray], align: bool, misfit=None) -> list[list[int]]:
    """The whole-pixel move ``[dy, dx]`` of each member's mean image (``(..., H, W)``) onto the first's, as
    :func:`pool_components` makes them (all ``[0, 0]`` without ``align``)."""
    if not align:
        return [[0, 0] for _ in means]
    plane = means[0].reshape(means[0].shape[-2:])
    shifts, moved = [], []
    for i, mean in enumerate(means):
        sh = (0, 0)
        if i > 0:
            base = tuple(int(round(v)) for v in nxcorr(plane, mean.reshape(plane.shape))[1])
            sh = base
            if misfit is not None:
                moves = [(base[0] + a, base[1] + b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
                sh = min(moves, key=lambda m: misfit(np.mean(moved + [np.roll(mean, (-m[0], -m[1]),
                                                                            axis=(-2, -1))], 0)))
        moved.append(np.roll(mean, (-sh[0], -sh[1]), axis=(-2, -1)))
        shifts.append([sh[0], sh[1]])
    return shifts


def member_alignment(op: InterferometryOperator) -> tuple[bool, object]:
    """``(align, misfit)`` of :func:`pool_components` for an ensemble fitted to ``op``'s data: members are moved
    unless complex visibilities fix the position, by the move whose pooled mean fits the data best (the summed
    reduced chi^2)."""
    return "vis" not in op.products, lambda img: sum(image_chi2(op, img).values())


def pooled_laplace_start(s: ReconstructSettings, modes: list[PosteriorFit], op) -> torch.Tensor:
    """Where every member's Laplace stage starts in an ensemble: the mean of the members' diagonal-fit means
    (:func:`mode_mean`, each with its member's seed ``s.seed + k``), moved onto the first member's position
    as :func:`pool_components` moves them (closure data do not fix it); ``(1, npix, npix)`` Jy/pixel.

    Why not each fit's own mean: a diagonal fit's mean carries its own pixel-scale offset, of about the
    prior's jitter, that the Laplace stage's few hundred steps do not remove; from their own means the
    members' Laplace-based flows differ by that offset, and Rubin's rules count it as posterior spread on
    top of each flow's own (docs/posterior.md, "Correlated base")."""
    means = [mode_mean(m, s.seed + k).numpy() for k, m in enumerate(modes)]
    with on_cpu(op):
        shifts = member_shifts(means, *member_alignment(op))
    moved = [np.roll(m, (-sh[0], -sh[1]), axis=(-2, -1)) for m, sh in zip(means, shifts)]
    return torch.tensor(np.mean(moved, 0), dtype=torch.float32)


def fit_bound(history: list[dict], steps: int, last: float = 0.2) -> float | None:
    """The DPI objective averaged over the logged reverse-KL steps of the fit's last ``last`` fraction: the
    negative ELBO of the posterior up to a constant (lower is better), comparable between fits of the same data
    (one step's loss is a noisy single-batch estimate). None without such steps."""
    losses = [h["loss"] for h in history if h["step"] > (1 - last) * steps and "objective" not in h]
    return float(np.mean(losses)) if losses else None


def member_settings(s: ReconstructSettings) -> list[ReconstructSettings]:
    """Each ensemble member's settings: seed ``s.seed + k`` and its share of the ``s.samples`` samples."""
    return [replace(s, seed=s.seed + k, samples=s.samples // s.ensemble + (k < s.samples % s.ensemble))
            for k in range(s.ensemble)]


def _fit_dpi(s: ReconstructSettings, geom, flux: float, op, prior, out: Path, resume: bool, progress: bool):
    """DPI, one flow or an ensemble of ``s.ensemble`` independently seeded flows (pooled); the fits' steps run
    on ``s.device`` (the operator, its data and the prior are moved there for them and back to the CPU after)."""
    device = torch.device(s.device)  # checked with the other settings (check_settings)
    op.to(device)
    prior.to(device)
    try:
        fits, posts = _fit_flows(s, geom, flux, op, prior, out, resume, progress)
    finally:
        op.cpu()
        prior.cpu()
    return _pooled_dpi(s, op, fits, posts)


def _fit_flows(s: ReconstructSettings, geom, flux: float, op, prior, out: Path, resume: bool,
               progress: bool) -> tuple[list[PosteriorFit], list[Posterior]]:
    """The flow fits of :func:`_fit_dpi`, one per ensemble member, and each one's posterior samples."""
    posts, fits = [], []
    folders = fit_folders(out, s.ensemble)
    settings = member_settings(s)

    def say(line: str) -> None:
        if progress and s.ensemble > 1:
            print(line, flush=True)

    if laplace_stage(s) and s.ensemble > 1 and s.laplace_start == "pooled":  # all start where the members agree
        modes = []
        for k, (sk, folder) in enumerate(zip(settings, folders)):
            say(f"ensemble member {k + 1} of {s.ensemble} (seed {sk.seed}): diagonal fit")
            modes.append(fit_mode(sk, geom, flux, op, prior, out=folder, resume=resume, progress=progress))
        x0 = pooled_laplace_start(s, modes, op)
        for k, (sk, folder, mode) in enumerate(zip(settings, folders, modes)):
            say(f"ensemble member {k + 1} of {s.ensemble}: Laplace-based flow from the members' pooled mean")
            fits.append(fit_laplace(sk, geom, flux, op, prior, mode, x0, out=folder, resume=resume,
                                    progress=progress))
            posts.append(fits[-1].final.posterior())  # sampled right after its fit, as a lone fit's are
    else:
        for k, (sk, folder) in enumerate(zip(settings, folders)):
            say(f"ensemble member {k + 1} of {s.ensemble} (seed {sk.seed})")
            fits.append(fit_posterior(sk, geom, flux, op, prior, out=folder, resume=resume, progress=progress))
            posts.append(fits[-1].final.posterior())
    return fits, posts


def _pooled_dpi(s: ReconstructSettings, op, fits: list[PosteriorFit], posts: list[Posterior]):
    """The ensemble's pooled posterior and what to record of the run, from :func:`_fit_flows`'s fits."""
    settings = member_settings(s)
    members, sample_fits = [], []
    for sk, fit, post in zip(settings, fits, posts):
        sample_fits.append(sample_chi2(op, post.samples))  # before any alignment move (pool_components)
        members.append({"seed": sk.seed, "n_samples": sk.samples, "steps": fit.diagonal_fit.step,
                        "laplace_steps": fit.laplace_steps, "fit_seconds": fit.seconds,
                        "final_loss": fit.final.history[-1]["loss"] if fit.final.history else None,
                        "bound": fit_bound(fit.final.history, fit.final.step)}
                       | image_chi2(op, post.mean)
                       | {"chi2_samples_median": {p: float(np.median(v)) for p, v in sample_fits[-1].items()}})
    first = fits[0]
    if s.ensemble == 1:
        post = posts[0]
    else:
        post, shifts = pool_components(posts, *member_alignment(op))
        post.diagnostics = posts[0].diagnostics | {"ensemble": members}
        for m, sh in zip(members, shifts):
            m["shift_px"] = sh
    seconds = sum(f.seconds for f in fits)
    post.diagnostics |= {"history": first.history, "seconds": seconds, "skipped_steps": first.skipped,
                         "warm_start_steps": first.warm_steps}
    run_info = {"steps": first.diagonal_fit.step, "laplace_steps": first.laplace_steps, "warm_start": first.start,
                "warm_start_steps": first.warm_steps,
                "skipped_steps": sum(f.skipped for f in fits), "rollbacks": sum(f.rollbacks for f in fits),
                "fit_seconds": seconds, "device": s.device, "ensemble": s.ensemble,
                "chi2_samples": summarize_sample_chi2({p: np.concatenate([f[p] for f in sample_fits])
                                                       for p in sample_fits[0]})}
    if s.ensemble > 1:
        run_info["ensemble_members"] = members
    return post, run_info


def fits_disagree_warning(chi2: dict[str, float], members: list[dict] | None, what: str = "fits") -> list[str]:
    """One line when the pooled mean fits a data product far worse than each fit's own mean does (reduced
    chi^2 above 2 and above twice the worst fit's): the fits found different images, the posterior has
    several modes, and their mean is not an image the data allow. ``chi2``: the mean's ``chi2_<product>``;
    ``members``: ``ensemble_members`` (each with its own mean's ``chi2_<product>``); ``what``: what they are
    called in the line (a sampling baseline's ``runs``, one entry holding their median chi^2)."""
    if not members:
        return []
    bad = [(k[5:], v, max(m[k] for m in members)) for k, v in chi2.items()
           if all(k in m for m in members) and v > 2 and v > 2 * max(m[k] for m in members)]
    if not bad:
        return []
    own = "fits' own at most" if what == "fits" else "runs' own median"
    count = f"{len(members)} fits" if what == "fits" else what
    shown = ", ".join(f"{p} {v:.3g} ({own} {w:.3g})" for p, v, w in bad)
    return [f"the {count} found different images: their pooled mean fits the data at reduced chi^2"
            f" {shown}; the posterior has several modes and its mean is not an image the data allow: look at each"
            f" {what[:-1]}'s samples (report.png, samples.h5) rather than the mean"]


def _fit(s: ReconstructSettings, geom, flux: float, op, prior, out: Path, resume: bool, progress: bool):
    """The chosen method on the built problem: (Posterior, what to record of the run)."""
    if s.method == "dpi":
        post, run_info = _fit_dpi(s, geom, flux, op, prior, out, resume, progress)
    else:
        problem = InverseProblem(op, op.data, prior, init=gaussian_blob(geom, flux, s.init_fwhm_uas)[None])
        options = dict(s.method_options)
        if s.method in SAMPLING_METHODS:
            options.setdefault("n_samples", s.samples)
            options.setdefault("seed", s.seed)
        post = run_method(s.method, problem, options, progress=progress)
        run_info = {"method_settings": post.diagnostics["config"], "fit_seconds": post.diagnostics["seconds"],
                    "point_estimate": bool(post.diagnostics.get("point_estimate", False))}
        if post.n_samples > 1:
            run_info["chi2_samples"] = summarize_sample_chi2(sample_chi2(op, post.samples))
            post, shifts = align_runs(post, op)
            if shifts is not None:
                run_info["run_shifts_px"] = shifts
    return post, run_info


def align_runs(post: Posterior, op: InterferometryOperator) -> tuple[Posterior, list[list[int]] | None]:
    """A sampling baseline's independent runs, each moved by whole pixels onto the first's position as
    :func:`pool_components` moves ensemble members, and summarised anew; with their moves ``[dy, dx]``
    (None, and the runs unmoved, where complex visibilities fix the position). Closure data leave the
    position free, so independent runs land a pixel or two apart and their plain mean is a blur that fits
    the data far worse than any run: PnP-DM chains that each fit the data as well as the truth does give a
    mean some 10^5 nats below it on five stations."""
    align, misfit = member_alignment(op)
    if not align:
        return post, None
    shifts = member_shifts(list(post.samples), True, misfit)
    moved = np.stack([np.roll(x, (-sh[0], -sh[1]), axis=(-2, -1)) for x, sh in zip(post.samples, shifts)])
    return summarize(moved, diagnostics=post.diagnostics), shifts


def reconstruct(obs_path, out, settings: ReconstructSettings | None = None, truth=None, resume: bool = False,
                progress: bool = True, overwrite: bool = False) -> dict:
    """Runs the whole job; returns the metrics written to ``out/metrics.json``."""
    s = settings or ReconstructSettings()
    out = check_run_folder(out, resume, overwrite)
    if resume and s.method == "dpi" and out.is_dir():  # checked before anything is written
        for folder in fit_folders(out, s.ensemble):
            load_checkpoint(folder, s.steps)
            load_checkpoint(folder / WARM_START_DIR)
    t0 = time.perf_counter()
    if s.threads:
        torch.set_num_threads(int(s.threads))
    truth_img = None
    if truth is not None:
        truth_img, truth_geom = read_fits_image(truth)
    obs, geom, op, prior, flux = build_problem(obs_path, s)
    prep = obs.meta["preparation"]  # {file: Preparation}
    if progress:
        for path, r in prep.items():
            print("\n".join((f"{Path(path).name}: " if len(prep) > 1 else "") + line for line in r.lines()))
    if truth_img is not None:
        truth_img = regrid(truth_img, truth_geom, geom)
    created = open_run_folder(out, overwrite, resume)
    try:
        post, run_info = _fit(s, geom, flux, op, prior, out, resume, progress)
        check_total_flux(float(post.mean.sum()), flux, op.flux_sigma, out, s.method)
        runs_chi2 = run_info.get("chi2_samples") if s.method != "dpi" else None
        chi2 = check_data_fit(op, post.mean, s.max_chi2, out, s.method, runs_chi2)
    except BaseException:
        discard_if_empty(out, created)  # a DPI fit keeps its checkpoints; a refused baseline leaves nothing
        raise
    mean = torch.tensor(post.mean[None], dtype=torch.float32)
    prior_method = prior_method_name(s)
    metrics = {"method": s.method, "prior": prior.name, "prior_method": prior_method, "products": list(s.products),
               "npix": s.npix, "fov_uas": s.fov_uas, "total_flux": float(post.mean.sum()),
               "total_flux_std": (float(post.samples.reshape(post.n_samples, -1).sum(1).std(ddof=1))
                                  if post.n_samples > 1 else None),
               "flux_constraint_jy": flux, "sys_noise": next(iter(prep.values())).sys_noise,
               "preparation": {p: r.as_dict() for p, r in prep.items()},
               "flux_from": "flag" if s.flux is not None else "zero-baseline amplitude",
               "n_samples": post.n_samples, "warnings": obs.meta.get("warnings", []), **run_info}
    metrics |= chi2
    runs = [{f"chi2_{p}": v["median"] for p, v in runs_chi2.items()}] if runs_chi2 else None
    disagree = fits_disagree_warning(chi2, run_info.get("ensemble_members")) + fits_disagree_warning(chi2, runs, "runs")
    for line in disagree:
        print(f"interfero reconstruct: warning: {line}", file=sys.stderr)
        metrics["warnings"] = metrics["warnings"] + [line]
    ring = ring_samples(post.samples.reshape(post.n_samples, s.npix, s.npix), s.fov_uas)
    try:
        metrics["ring"] = summarize_ring(ring, post.fit_sizes)
    except InterferoError as err:  # no ring in the samples (a point source, a bar): say so, do not fail the run
        metrics["ring"] = {"error": str(err)}
    if truth_img is not None:
        metrics |= image_metrics(post.mean.reshape(s.npix, s.npix), truth_img, geom)
        n2 = (s.npix, s.npix)
        if post.n_samples > 1:  # a point estimate has no intervals to score
            bounds = {"68": (post.lo68.reshape(n2), post.hi68.reshape(n2)),
                      "95": (post.lo95.reshape(n2), post.hi95.reshape(n2))}
            metrics |= interval_coverage(bounds, truth_img, metrics["nxcorr_shift_px"])
            mean_img = post.mean.reshape(n2)
            if mean_img.max() > 0:  # over the pixels the mean picks: what an exact posterior holds at the level
                chosen = interval_coverage(bounds, truth_img, metrics["nxcorr_shift_px"],
                                           region=posterior_region(mean_img))
                metrics |= {f"truth_coverage_mean_region_{lv}": chosen[f"truth_coverage_{lv}"] for lv in bounds}
                metrics["coverage_mean_region_pixels"] = chosen["coverage_pixels"]
            metrics |= error_against_std(post.mean.reshape(n2), post.std.reshape(n2), truth_img,
                                         metrics["nxcorr_shift_px"])
            members = run_info.get("ensemble_members")  # each fit's samples scored where it was fitted
            fitted = post.samples if not members else fitted_samples(post.samples, post.fit_sizes,
                                                                    [m["shift_px"] for m in members])
            if run_info.get("run_shifts_px"):  # each run of a baseline likewise
                fitted = np.stack([np.roll(x, (sh[0], sh[1]), axis=(-2, -1))
                                   for x, sh in zip(post.samples, run_info["run_shifts_px"], strict=True)])
            metrics |= truth_loglik_rank(op, fitted, truth_img)
        metrics["truth"] = str(truth)
        # what the featureless starting blob already scores: nxcorr is only meaningful above it
        blob = gaussian_blob(geom, flux, s.init_fwhm_uas)[0].numpy().astype(np.float64)
        base = image_metrics(blob, truth_img, geom)
        metrics |= {f"init_blob_{k}": base[k] for k in ("nxcorr", "nxcorr_blur10", "nxcorr_blur20")}
        metrics |= truth_prior_percentile(prior, truth_img, s.seed)
    meta = {"observation": ", ".join(prep), "source": obs.source, "units": "Jy/pixel",
            "geometry": {"npix": s.npix, "fov_uas": s.fov_uas}, "settings": asdict(s),
            "operator": {"products": list(op.products), "total_flux": flux, "flux_sigma": op.flux_sigma,
                         "n_vis": obs.n_vis, **{f"n_{k}": int(op.data[k].shape[-1]) for k in op.products}},
            "prior": {"name": prior.name, "method": prior_method, "fov_uas": prior.fov_uas}}
    write_samples_h5(post, out / "samples.h5", meta)
    write_fits_summaries(post, geom, out)
    plot_uv_coverage(obs, out / "uv_coverage.png")
    plot_report(post, geom, out / "report.png", residuals=_residuals(op, mean), truth=truth_img,
                title=f"{obs.source}: {s.method.upper()} with prior {prior.name} ({', '.join(s.products)})", ring=ring)
    metrics["runtime_s"] = time.perf_counter() - t0
    write_json(metrics, out / "metrics.json")
    return metrics
