"""Image restoration with the score prior: denoising, deblurring, box and random inpainting (``interfero restore``).

The restoration tasks run on the same operator interface as interferometry
(:mod:`interfero.operators.image`) and through the same method seam (:mod:`posterior.methods`):
the problem (operator with its noise model, data, prior) is built once, whatever method then runs.

Tasks (defaults sized for the shipped 32x32 black-hole prior's images):

| task | operator | default noise |
|---|---|---|
| ``denoise`` | identity | 10% of the peak |
| ``deblur`` | circular Gaussian blur, ``blur_px`` = 1.5 px std | 2% |
| ``box-inpaint`` | a centred box of ``box_frac`` = 1/3 of the side hidden | 2% |
| ``random-inpaint`` | ``missing`` = 70% of the pixels hidden (seeded) | 2% |

Noise: Gaussian of std ``noise`` (``"5%"``: a fraction of the image's peak; a number: image units),
or Poisson with ``noise_kind="poisson"`` (``noise`` then the counts per unit of intensity, default 1000).

Images: FITS (Jy/pixel, with its field of view, which must match the prior's), NPY (a 2-D array in
the prior's units) or PNG (grey levels 0-1 scaled to ``0 .. shift + scale`` of the prior, the top of
its training range). The image is the degraded measurement; with ``simulate`` it is a clean image that
is first degraded (seeded) and then scored against itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from interfero.errors import InterferoError
from interfero.io import ImageGeometry, read_fits_image, write_fits_image
from interfero.operators import (
    Denoising,
    GaussianBlur,
    GaussianNoise,
    Inpainting,
    PoissonNoise,
    box_inpainting,
    random_inpainting,
)

from .methods import SAMPLING_METHODS, method_config, run_method
from .metrics import interval_coverage, psnr, ssim
from .metrics import nxcorr as nxcorr_fn
from .problem import InverseProblem
from .report import plot_report, write_fits_summaries, write_json, write_samples_h5

TASKS = ("denoise", "deblur", "box-inpaint", "random-inpaint")
DEFAULT_NOISE = {"denoise": "10%", "deblur": "2%", "box-inpaint": "2%", "random-inpaint": "2%"}


@dataclass
class RestoreSettings:
    """Settings of :func:`restore` (see the module docstring)."""

    task: str = "denoise"
    noise: str | None = None  # None: the task's default (DEFAULT_NOISE)
    noise_kind: str = "gaussian"
    blur_px: float = 1.5
    box_frac: float = 1 / 3
    missing: float = 0.7
    prior: str = "default"
    method: str = "dpi"
    method_options: dict = field(default_factory=dict)
    seed: int = 0
    allow_fov_mismatch: bool = False
    threads: int | None = None

    def validate(self) -> None:
        if self.task not in TASKS:
            raise InterferoError(f"unknown task {self.task!r} (choose from {', '.join(TASKS)})")
        if self.noise_kind not in ("gaussian", "poisson"):
            raise InterferoError(f"unknown noise kind {self.noise_kind!r} (choose from gaussian, poisson)")
        if not (math.isfinite(self.blur_px) and self.blur_px > 0):
            raise InterferoError(f"--blur must be > 0 pixels, got {self.blur_px}")
        if not 0 < self.box_frac < 1:
            raise InterferoError(f"--box must be a fraction of the side in (0, 1), got {self.box_frac}")
        if not 0 < self.missing < 1:
            raise InterferoError(f"--missing must be a fraction in (0, 1), got {self.missing}")
        method_config(self.method, self.method_options)


def read_image(path, prior) -> tuple[np.ndarray, ImageGeometry]:
    """A 2-D image from FITS / NPY / PNG in the prior's units, and its geometry (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InterferoError(f"{path}: no such image file")
    suffix = path.suffix.lower()
    n = prior.image_shape[-1]
    fov = prior.fov_uas or float(n)
    try:
        if suffix in (".fits", ".fit"):
            img, geom = read_fits_image(path)
        elif suffix == ".npy":
            img = np.load(path, allow_pickle=False)
            geom = ImageGeometry(img.shape[-1] if img.ndim == 2 else n, fov)
        elif suffix == ".png":
            import matplotlib.image as mpimg

            img = np.asarray(mpimg.imread(path), dtype=np.float64)
            if img.ndim == 3:  # RGB(A): luminance
                img = img[..., :3] @ np.array([0.299, 0.587, 0.114])
            img = img * (prior.shift + prior.scale)
            geom = ImageGeometry(img.shape[-1], fov)
        else:
            raise InterferoError(f"{path}: unknown image format {suffix!r} (use .fits, .npy or .png)")
    except (OSError, ValueError) as err:
        raise InterferoError(f"{path}: cannot read the image ({err})") from None
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 2 or img.shape[0] != img.shape[1]:
        raise InterferoError(f"{path}: expected a square 2-D image, got shape {img.shape}")
    if img.shape[0] != n:
        raise InterferoError(f"{path}: image is {img.shape[0]}x{img.shape[1]} pixels, the prior {prior.name} is for"
                             f" {n}x{n}")
    if not np.all(np.isfinite(img)):
        raise InterferoError(f"{path}: image has NaN or infinite pixels")
    if suffix in (".fits", ".fit") and prior.fov_uas and not math.isclose(geom.fov_uas, prior.fov_uas, rel_tol=1e-6):
        msg = (f"{path}: field of view {geom.fov_uas:g} uas, the prior {prior.name} was trained on"
               f" {prior.fov_uas:g} uas")
        raise InterferoError(msg)
    return img, geom


def noise_sigma(spec: str, image: np.ndarray) -> float:
    """``"5%"`` -> 5% of the image's peak; ``"0.01"`` -> 0.01 (image units)."""
    text = str(spec).strip()
    try:
        value = float(text[:-1]) / 100 * float(np.max(np.abs(image))) if text.endswith("%") else float(text)
    except ValueError:
        raise InterferoError(f"--noise expects a number or a percentage of the peak, got {spec!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise InterferoError(f"--noise must give a noise level > 0, got {spec!r} ({value:g})")
    return value


def task_operator(s: RestoreSettings, shape: tuple[int, int, int], level: float):
    """The task's operator with its noise model (Gaussian std ``level``, or Poisson gain ``level``)."""
    noise = GaussianNoise(level) if s.noise_kind == "gaussian" else PoissonNoise(level)
    n = shape[-1]
    if s.task == "denoise":
        return Denoising(shape, noise)
    if s.task == "deblur":
        return GaussianBlur(shape, s.blur_px, noise)
    if s.task == "box-inpaint":
        b = max(1, round(s.box_frac * n))
        top = (n - b) // 2
        return box_inpainting(shape, (top, top, b, b), noise)
    return random_inpainting(shape, 1 - s.missing, seed=s.seed, noise=noise)


def measurement_from_image(op, img: np.ndarray) -> torch.Tensor:
    """A degraded image as the operator's measurement (inpainting keeps only the observed pixels)."""
    x = torch.tensor(img, dtype=torch.float32)[None, None]
    return op(x) if isinstance(op, Inpainting) else x


def restore(image, out, settings: RestoreSettings | None = None, truth=None, simulate: bool = False,
            progress: bool = True, overwrite: bool = False) -> dict:
    """Restores ``image`` (degraded, or clean with ``simulate``); writes the outputs of ``reconstruct``
    (samples.h5, mean/std FITS, report.png, metrics.json) to ``out`` and returns the metrics."""
    from priors.pretrained import load_prior

    from .reconstruct import check_run_folder, discard_if_empty, open_run_folder

    s = settings or RestoreSettings()
    s.validate()
    out = check_run_folder(out, overwrite=overwrite)
    t0 = time.perf_counter()
    if s.threads:
        torch.set_num_threads(int(s.threads))
    prior = load_prior(s.prior, elbo={"draws": 2, "importance": True})  # DPI's and MAP's ELBO, as reconstruct
    img, geom = read_image(image, prior)
    truth_img = img if simulate else (read_image(truth, prior)[0] if truth is not None else None)
    shape = prior.image_shape
    if s.noise_kind == "gaussian":
        level = noise_sigma(s.noise or DEFAULT_NOISE[s.task], img)
    else:
        level = noise_sigma(s.noise or "1000", img)  # counts per unit intensity
    op = task_operator(s, shape, level)
    if simulate:
        y = op.sample(torch.tensor(img, dtype=torch.float32)[None, None], torch.Generator().manual_seed(s.seed))
    else:
        y = measurement_from_image(op, img)
    created = open_run_folder(out, overwrite)
    problem = InverseProblem(op, y, prior)
    options = dict(s.method_options)
    if s.method in SAMPLING_METHODS:
        options.setdefault("seed", s.seed)
    try:
        post = run_method(s.method, problem, options, progress=progress)
    except BaseException:
        discard_if_empty(out, created)  # a refused run writes nothing
        raise
    n = shape[-1]
    mean = post.mean.reshape(n, n)
    metrics = {"task": s.task, "method": s.method, "method_settings": post.diagnostics.get("config", {}),
               "prior": prior.name, "noise_kind": s.noise_kind, "noise_level": level,
               "simulated": bool(simulate), "n_samples": post.n_samples,
               "point_estimate": bool(post.diagnostics.get("point_estimate", False)),
               "fit_seconds": post.diagnostics.get("seconds"), "settings": asdict(s)}
    if truth_img is not None:
        metrics |= {"psnr": psnr(mean, truth_img), "ssim": ssim(mean, truth_img),
                    "nxcorr": nxcorr_fn(mean, truth_img, shift=False)[0]}
        n2 = (n, n)
        if post.n_samples > 1:  # a point estimate has no intervals to score
            metrics |= interval_coverage({"68": (post.lo68.reshape(n2), post.hi68.reshape(n2)),
                                          "95": (post.lo95.reshape(n2), post.hi95.reshape(n2))}, truth_img)
    meta = {"image": str(image), "units": "Jy/pixel" if prior.fov_uas else "intensity",
            "geometry": {"npix": geom.npix, "fov_uas": geom.fov_uas}, "settings": asdict(s)}
    write_samples_h5(post, out / "samples.h5", meta)
    write_fits_summaries(post, geom, out)
    degraded = op.pseudo_inverse(y)[0, 0].detach().double().numpy()
    write_fits_image(degraded, geom, out / "measurement.fits", {"POSTSUM": "degraded"})
    plot_report(post, geom, out / "report.png", truth=truth_img,
                title=f"{s.task}: {s.method.upper()} with prior {prior.name}")
    metrics["runtime_s"] = time.perf_counter() - t0
    write_json(metrics, out / "metrics.json")
    return metrics
