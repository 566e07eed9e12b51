"""Image-quality metrics shared by every reconstruction method.

- :func:`nxcorr`: normalised cross-correlation after the best shift (as
  ehtim's ``compare_images``: integer shift at the FFT cross-correlation peak),
  refined here to sub-pixel precision with Fourier shifts.
- :func:`blur_circular`: convolution with a circular Gaussian of a given FWHM
  (microarcseconds), flux-conserving (as ehtim's ``blur_circ``).
- :func:`image_metrics`: PSNR, SSIM (scikit-image), nxcorr unblurred and after
  10/15/20 uas blurring; it says which grid and blurs it used.
- :func:`reduced_chi2`: per data product, ehtim's definitions (from the operator);
  :func:`sample_chi2` and :func:`summarize_sample_chi2`: the same for every
  posterior sample (a posterior predictive check).
- :func:`interval_coverage`: the fraction of the truth's source pixels inside
  the posterior's per-pixel 68% / 95% intervals (calibration of the
  uncertainty maps), after aligning the truth by the nxcorr shift.

Images are 2-D arrays in Jy/pixel (row 0 = north, column 0 = east), pixel
centres at ``(i + 1/2 - N/2) * psize`` as in :mod:`interfero.io`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, optimize

from interfero.errors import InterferoError
from interfero.io import ImageGeometry

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
BLURS_UAS = (10.0, 15.0, 20.0)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise InterferoError(f"images to compare must be 2-D of the same shape, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InterferoError("images to compare contain NaN or infinite pixels")
    return a, b


def _normalise(a: np.ndarray) -> np.ndarray:
    s = a.std()
    if not s > 0:
        raise InterferoError("cannot correlate a constant image")
    return (a - a.mean()) / s


def _fourier_shift(a: np.ndarray, shift) -> np.ndarray:
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(a), shift)).real


def _padded(a: np.ndarray) -> np.ndarray:
    """``a`` (2-D) centred in a zero field of twice its size (no wrap-around of FFT shifts within one field)."""
    h, w = a.shape
    out = np.zeros((2 * h, 2 * w))
    out[h // 2:h // 2 + h, w // 2:w // 2 + w] = a
    return out


def nxcorr(image: np.ndarray, truth: np.ndarray, shift: bool = True, subpixel: bool = True) -> tuple[float, tuple]:
    """Normalised cross-correlation at the best shift of ``image`` (returned, pixels ``(dy, dx)``).

    As ehtim's ``compare_images`` with its defaults: both images are zero-padded to twice their field,
    normalised over the padded field (zero mean, unit standard deviation), and the shift is the integer
    peak of the FFT cross-correlation; ``subpixel`` then refines it within one pixel by Fourier shifts
    (which can only raise the value). ``nxcorr = mean(z_image * z_truth)`` over the padded field."""
    a, b = _check_pair(image, truth)
    if not (a.std() > 0 and b.std() > 0):
        raise InterferoError("cannot correlate a constant image")
    h, w = a.shape
    za, zb = _normalise(_padded(a)), _normalise(_padded(b))
    n = za.size
    if not shift:
        return float((za * zb).sum() / n), (0.0, 0.0)
    xc = np.fft.ifft2(np.fft.fft2(zb) * np.conj(np.fft.fft2(za))).real
    iy, ix = np.unravel_index(np.argmax(xc), xc.shape)
    dy = iy if iy <= h else iy - 2 * h
    dx = ix if ix <= w else ix - 2 * w

    def corr(s) -> float:
        return float((_fourier_shift(za, s) * zb).sum() / n)

    best = (float(dy), float(dx))
    val = corr(best)
    if subpixel:
        res = optimize.minimize(lambda s: -corr(s), np.array(best), method="Nelder-Mead",
                                options={"xatol": 1e-3, "fatol": 1e-7, "initial_simplex": np.array(best) + np.array(
                                    [[0, 0], [0.5, 0], [0, 0.5]])})
        if -res.fun > val and np.all(np.abs(res.x - np.array(best)) <= 1.0):
            best, val = (float(res.x[0]), float(res.x[1])), float(-res.fun)
    return val, best


def blur_circular(image: np.ndarray, fwhm_uas: float, psize_uas: float) -> np.ndarray:
    """``image`` convolved with a normalised circular Gaussian of FWHM ``fwhm_uas`` (reflecting edges, flux
    conserving; equal to ehtim's ``blur_circ``)."""
    if fwhm_uas <= 0:
        return np.asarray(image, dtype=np.float64).copy()
    sigma_px = fwhm_uas / FWHM_PER_SIGMA / psize_uas
    return ndimage.gaussian_filter(np.asarray(image, dtype=np.float64), sigma_px, mode="reflect", truncate=6.0)


def psnr(image: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) with the truth's range as the data range."""
    a, b = _check_pair(image, truth)
    rng = float(b.max() - b.min())
    if not rng > 0:
        raise InterferoError("PSNR needs a non-constant truth")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(rng**2 / mse)


def ssim(image: np.ndarray, truth: np.ndarray) -> float:
    """Structural similarity (scikit-image) with the truth's range as the data range."""
    from skimage.metrics import structural_similarity

    a, b = _check_pair(image, truth)
    rng = float(b.max() - b.min())
    if not rng > 0:
        raise InterferoError("SSIM needs a non-constant truth")
    win = min(7, a.shape[0] - (1 - a.shape[0] % 2))
    return float(structural_similarity(b, a, data_range=rng, win_size=win))


def image_metrics(image: np.ndarray, truth: np.ndarray, geom: ImageGeometry, blurs_uas=BLURS_UAS) -> dict:
    """PSNR, SSIM, nxcorr (best sub-pixel shift) and nxcorr after each circular blur, on ``geom``'s grid."""
    a, b = _check_pair(image, truth)
    val, sh = nxcorr(a, b)
    out = {"grid": {"npix": geom.npix, "fov_uas": geom.fov_uas}, "psnr": psnr(a, b), "ssim": ssim(a, b),
           "nxcorr": val, "nxcorr_shift_px": list(sh), "blurs_fwhm_uas": list(blurs_uas)}
    for fwhm in blurs_uas:
        out[f"nxcorr_blur{fwhm:g}"] = nxcorr(blur_circular(a, fwhm, geom.psize_uas),
                                            blur_circular(b, fwhm, geom.psize_uas))[0]
    return out


def reduced_chi2(operator, x) -> dict[str, float]:
    """Reduced chi^2 per data product of an interferometry operator for one image ``(1, 1, N, N)`` tensor."""
    chi = operator.chi2(x)
    return {f"chi2_{k}": float(v.reshape(-1)[0]) for k, v in chi.items()}


def sample_chi2(operator, samples: np.ndarray, chunk: int = 64) -> dict[str, np.ndarray]:
    """Reduced chi^2 per data product of each posterior sample (images ``(n, ...)`` of the operator's
    image shape, Jy/pixel): ``{"<product>": (n,) array}``."""
    import torch

    x = np.asarray(samples)
    n = x.shape[0]
    if n < 1:
        raise InterferoError("no samples to score")
    x = x.reshape(n, *operator.image_shape)
    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for i in range(0, n, chunk):
            chi = operator.chi2(torch.tensor(x[i:i + chunk], dtype=torch.float32))
            for k, v in chi.items():
                out.setdefault(k, []).append(v.double().numpy().reshape(-1))
    return {k: np.concatenate(v) for k, v in out.items()}


def summarize_sample_chi2(values: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{"<product>": {"median", "p10", "p90"}}`` of per-sample reduced chi^2 (:func:`sample_chi2`).

    Samples of a posterior that describes the data fit them about as well as the truth does: for a
    linear model with Gaussian noise and prior, the mean's expected chi^2 is ``m - p`` (``m`` data,
    ``p`` data-constrained parameters) and a sample's ``m``, the truth's, so a reduced chi^2 near 1. A
    mean fitting at ~1 whose samples fit far worse is a posterior too wide in the directions the data
    measure."""
    return {k: {"median": float(np.median(v)), "p10": float(np.quantile(v, 0.1)),
                "p90": float(np.quantile(v, 0.9))} for k, v in values.items()}


def truth_loglik_rank(operator, samples: np.ndarray, truth: np.ndarray, chunk: int = 64) -> dict[str, float]:
    """Where the truth's data fit falls among the posterior samples': ``truth_loglik_rank``, the fraction of
    samples whose log-likelihood ``log p(y | x)`` (all the operator's data products and its flux term) is below
    the truth's, and ``truth_loglik_excess``, the truth's log-likelihood minus the samples' median (nats).

    A test of simulation-based calibration that needs no pixel alignment: when the truth is drawn from the
    prior and the data from the truth, the truth and a draw of the exact posterior are exchangeable given the
    data, so over many truths the rank is uniform on [0, 1] (mean 0.5) and the excess is centred near 0.
    A rank of 1 in case after case (the truth fits better than every sample) means the samples lie outside
    the posterior's typical set. ``samples``: ``(n, ...)`` images of the operator's image shape, each where
    it was fitted (an ensemble's pooled samples moved back: ``posterior.summary.fitted_samples``; the
    whole-pixel move is circular, and pixel noise carried across the field's edge spoils the fit to the
    longest baselines), ``truth``: one such image (Jy/pixel)."""
    import torch

    x = np.asarray(samples, dtype=np.float64)
    n = x.shape[0]
    if n < 1:
        raise InterferoError("no samples to score")
    t = np.asarray(truth, dtype=np.float64).reshape(1, *operator.image_shape)
    x = x.reshape(n, *operator.image_shape)
    with torch.no_grad():
        ll_truth = float(operator.log_likelihood(torch.tensor(t, dtype=torch.float32), operator.data)[0])
        ll = np.concatenate([operator.log_likelihood(torch.tensor(x[i:i + chunk], dtype=torch.float32),
                                                     operator.data).double().numpy().reshape(-1)
                             for i in range(0, n, chunk)])
    if not (math.isfinite(ll_truth) and np.all(np.isfinite(ll))):
        raise InterferoError("the log-likelihood of the truth or of a sample is NaN or infinite")
    return {"truth_loglik_rank": float(np.mean(ll < ll_truth)),
            "truth_loglik_excess": float(ll_truth - np.median(ll))}


def shift_image(image: np.ndarray, shift_px) -> np.ndarray:
    """``image`` (2-D) moved by ``(dy, dx)`` pixels, fractions included, as :func:`nxcorr` moves images: a
    Fourier shift on the field zero-padded to twice its size (no wrap-around within one field), cropped
    back. A Fourier shift keeps every spatial frequency's power; linear interpolation would average
    neighbouring pixels and smooth the image (at half a pixel its white pixel noise shrinks by a factor
    sqrt(2)), so a truth moved that way would sit inside per-pixel intervals more often than it should."""
    a = np.asarray(image, dtype=np.float64)
    dy, dx = float(shift_px[0]), float(shift_px[1])
    if dy == round(dy) and dx == round(dx):  # whole pixels: move them exactly
        return ndimage.shift(a, (dy, dx), order=0, mode="constant")
    h, w = a.shape
    return _fourier_shift(_padded(a), (dy, dx))[h // 2:h // 2 + h, w // 2:w // 2 + w]


def aligned_truth(truth: np.ndarray, shift_px=(0.0, 0.0), region_frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The truth moved by the opposite of the nxcorr ``(dy, dx)`` shift of a reconstruction
    (:func:`shift_image`; closure data do not fix the absolute position) and its source region (pixels at
    or above ``region_frac`` of its peak): what :func:`interval_coverage` scores."""
    t = np.asarray(truth, dtype=np.float64)
    if t.ndim != 2 or not np.all(np.isfinite(t)):
        raise InterferoError("truth for interval coverage must be a finite 2-D image")
    if not 0 < region_frac < 1:
        raise InterferoError(f"region_frac must be in (0, 1), got {region_frac}")
    aligned = shift_image(t, (-float(shift_px[0]), -float(shift_px[1])))
    return aligned, aligned >= region_frac * aligned.max()


def posterior_region(mean: np.ndarray, region_frac: float = 0.1) -> np.ndarray:
    """The pixels where the posterior mean (2-D, Jy/pixel) is at or above ``region_frac`` of its peak: a
    choice of pixels made from the data alone.

    Why not the truth's own bright pixels: which pixels the truth picks depends on where it sits in the
    posterior's spread, so over them even an exact posterior's intervals hold it more or less often than
    their level, the more so the wider the posterior is against the image's structure (on a Gaussian check
    with a wide posterior 72% or 61% for a 68% interval, by the threshold: ``tests/test_posterior_coverage.py``).
    Over pixels chosen from the data, an exact posterior's intervals hold the truth at the nominal rates on
    average over truths (simulation-based calibration)."""
    m = np.asarray(mean, dtype=np.float64)
    if m.ndim != 2 or not np.all(np.isfinite(m)) or not m.max() > 0:
        raise InterferoError("the posterior region needs a finite 2-D mean image with a positive peak")
    if not 0 < region_frac < 1:
        raise InterferoError(f"region_frac must be in (0, 1), got {region_frac}")
    return m >= region_frac * m.max()


def interval_coverage(intervals: dict[str, tuple[np.ndarray, np.ndarray]], truth: np.ndarray,
                      shift_px=(0.0, 0.0), region_frac: float = 0.1, region: np.ndarray | None = None) -> dict:
    """Fraction of source pixels whose true value lies inside each per-pixel interval.

    ``intervals``: ``{"68": (lo, hi), "95": (lo, hi)}`` 2-D arrays (Jy/pixel). ``shift_px``: the
    ``(dy, dx)`` that :func:`nxcorr` returns for the posterior mean against the truth; the truth is moved by
    its opposite (:func:`shift_image`), because closure data do not fix the absolute position. Source
    pixels: the aligned truth at or above ``region_frac`` of its peak, or the boolean mask ``region``
    (e.g. :func:`posterior_region`). A calibrated posterior gives 0.68 and 0.95 over pixels chosen from the
    data; over the truth's own (the default) about that when the data pin the image, else more or less
    (:func:`posterior_region`)."""
    t = np.asarray(truth, dtype=np.float64)
    aligned, own = aligned_truth(t, shift_px, region_frac)
    if region is None:
        region, where = own, f"truth >= {region_frac:g} of its peak after the nxcorr shift"
    else:
        region, where = np.asarray(region, dtype=bool), "the given pixels"
        if region.shape != t.shape or not region.any():
            raise InterferoError(f"the coverage region must be a non-empty mask of shape {t.shape}")
    out = {"coverage_region": where, "coverage_pixels": int(region.sum())}
    for name, (lo, hi) in intervals.items():
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        if lo.shape != t.shape or hi.shape != t.shape:
            raise InterferoError(f"interval {name} has shape {lo.shape}, the truth {t.shape}")
        inside = (aligned >= lo) & (aligned <= hi)
        out[f"truth_coverage_{name}"] = float(inside[region].mean())
    return out


def error_against_std(mean: np.ndarray, std: np.ndarray, truth: np.ndarray, shift_px=(0.0, 0.0),
                      region_frac: float = 0.1) -> dict:
    """How far the posterior mean is from the truth in units of its own std, over the source pixels that
    :func:`interval_coverage` scores (truth aligned the same way): ``truth_rms_error`` and
    ``posterior_rms_std`` (Jy/pixel) and ``truth_median_abs_z``, the median of ``|mean - truth| / std``
    (0.67 for a calibrated Gaussian posterior; 10 means intervals ten times too narrow)."""
    m, sd = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    aligned, region = aligned_truth(np.asarray(truth, dtype=np.float64), shift_px, region_frac)
    if m.shape != aligned.shape or sd.shape != aligned.shape:
        raise InterferoError(f"mean {m.shape} and std {sd.shape} must have the truth's shape {aligned.shape}")
    err, sd = (m - aligned)[region], sd[region]
    return {"truth_rms_error": float(np.sqrt(np.mean(err**2))), "posterior_rms_std": float(np.sqrt(np.mean(sd**2))),
            "truth_median_abs_z": float(np.median(np.abs(err) / np.maximum(sd, np.finfo(float).tiny)))}
