"""Writers for posterior results: HDF5 samples, FITS mean/std, JSON metrics, a PNG report (all atomic)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from interfero.io import ImageGeometry, atomic_path, atomic_write_text, write_fits_image
from interfero.plotting import plt, save_figure

from .summary import Posterior


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj: dict, path) -> None:
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2))


def write_samples_h5(post: Posterior, path, metadata: dict) -> None:
    """``samples`` ``(N, C, H, W)``, ``mean``, ``std``, intervals, ``log_q`` (one flow) or ``fit_sizes`` (an
    ensemble: how many samples each fit gave, in order) and the loss history; ``metadata``
    (operator, prior, settings) as JSON in the file attributes."""
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("samples", data=post.samples.astype(np.float32), compression="gzip", compression_opts=4)
            for k in ("mean", "std", "lo68", "hi68", "lo95", "hi95"):
                f.create_dataset(k, data=getattr(post, k))
            if post.log_q is not None:
                f.create_dataset("log_q", data=post.log_q)
            if post.fit_sizes is not None:  # pooled samples of independent fits, in this order
                f.create_dataset("fit_sizes", data=np.asarray(post.fit_sizes, dtype=np.int64))
            hist = post.diagnostics.get("history", [])
            if hist:
                keys = sorted(hist[0])
                f.create_dataset("history", data=np.array([[h[k] for k in keys] for h in hist], dtype=np.float64))
                f["history"].attrs["columns"] = json.dumps(keys)
            f.attrs["metadata"] = json.dumps(_jsonable(metadata))
            diag = {k: v for k, v in post.diagnostics.items() if k != "history"}
            f.attrs["diagnostics"] = json.dumps(_jsonable(diag))
            f.attrs["units"] = metadata.get("units", "")


def write_fits_summaries(post: Posterior, geom: ImageGeometry, out_dir) -> dict[str, Path]:
    """``mean.fits`` and ``std.fits`` (ehtim-compatible headers, Jy/pixel)."""
    out_dir = Path(out_dir)
    paths = {}
    for name in ("mean", "std"):
        p = out_dir / f"{name}.fits"
        write_fits_image(getattr(post, name).reshape(geom.npix, geom.npix), geom, p, {"POSTSUM": name})
        paths[name] = p
    return paths


def _imshow(ax, img, geom: ImageGeometry, title: str, cmap="afmhot", fig=None):
    half = geom.fov_uas / 2
    im = ax.imshow(img, origin="upper", extent=(half, -half, -half, half), cmap=cmap)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=6)
    if fig is not None:
        fig.colorbar(im, ax=ax, fraction=0.046)


REL_STD_FLOOR = 0.05  # the std/mean panel masks pixels fainter than this fraction of the peak


def shown_samples(fit_sizes: list[int], k: int) -> list[tuple[int, str]]:
    """Which of the pooled samples the report shows (at most ``k``), and their titles: taken in turn from
    each fit (``fit_sizes``: the samples of each, in order), so an ensemble's panels show every fit."""
    starts = np.concatenate([[0], np.cumsum(fit_sizes)[:-1]])
    out = []
    for j in range(max(fit_sizes)):
        for f, (start, size) in enumerate(zip(starts, fit_sizes)):
            if j < size and len(out) < k:
                label = f"sample {j}" if len(fit_sizes) == 1 else f"fit {f}, sample {j}"
                out.append((int(start + j), label))
    return out


def plot_report(post: Posterior, geom: ImageGeometry, path, residuals: dict[str, np.ndarray] | None = None,
                truth: np.ndarray | None = None, title: str = "", ring: dict[str, np.ndarray] | None = None) -> None:
    """Mean, std, std/mean, (truth), 8 samples, normalised data residuals per product, loss curve, and
    with ``ring`` (per-sample features, :func:`posterior.ring.ring_samples`) histograms of the ring's
    diameter, width, position angle and asymmetry."""
    n = geom.npix
    mean, std = post.mean.reshape(n, n), post.std.reshape(n, n)
    residuals = residuals or {}
    fig = plt.figure(figsize=(14, 10))
    gs = fig.add_gridspec(4, 6)
    # fractional uncertainty only where there is emission: off-source the mean is ~0 and the ratio meaningless
    on = mean > REL_STD_FLOOR * mean.max()
    rel = np.where(on, std / np.where(on, mean, 1.0), np.nan)
    top = [(mean, "posterior mean (Jy/px)", "afmhot"), (std, "posterior std (Jy/px)", "viridis"),
           (rel, f"std / mean (mean > {REL_STD_FLOOR:.0%} of peak)", "magma")]
    if truth is not None:
        top.append((truth, "truth (regridded)", "afmhot"))
    for i, (img, t, cm) in enumerate(top):
        _imshow(fig.add_subplot(gs[0, i]), img, geom, t, cm, fig)
    shown = shown_samples(post.fit_sizes or [post.n_samples], 8)
    k = len(shown)
    for i, (j, label) in enumerate(shown):
        ax = fig.add_subplot(gs[1 + i // 6, i % 6])
        _imshow(ax, post.samples[j].reshape(n, n), geom, label)
    row = 2 if k <= 6 else 3
    col = k % 6 if k <= 6 else k - 6
    for name, r in residuals.items():
        if col >= 5:
            break
        ax = fig.add_subplot(gs[row, col])
        ax.plot(r, ".", ms=2)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{name}: residual / sigma", fontsize=9)
        ax.tick_params(labelsize=6)
        col += 1
    if ring is not None and k == 8:  # row 2 holds samples 6-7; its other four cells take the ring features
        for j, (key, label) in enumerate((("diameter_uas", "ring diameter (uas)"), ("width_uas", "ring width (uas)"),
                                          ("pa_deg", "position angle (deg E of N)"), ("asymmetry", "asymmetry"))):
            v = np.asarray(ring[key])
            v = v[np.isfinite(v)]
            ax = fig.add_subplot(gs[2, 2 + j])
            if len(v):
                ax.hist(v, bins=30, color="C1")
                for x, ls in zip(np.quantile(v, [0.16, 0.5, 0.84]), (":", "-", ":")):
                    ax.axvline(x, color="k", ls=ls, lw=0.8)
            ax.set_title(f"posterior {label}", fontsize=9)
            ax.tick_params(labelsize=6)
    hist = post.diagnostics.get("history", [])
    if hist:
        ax = fig.add_subplot(gs[3, 4:])
        steps = [h["step"] for h in hist]
        ax.plot(steps, [h["loss"] for h in hist], lw=0.8)
        for stage, label in ((0, " diagonal fit"), (1, " Laplace fit")):  # the loss jumps where a fit starts
            before = [h["step"] for h in hist if h.get("stage") == stage]
            if before and any(h.get("stage", 1) > stage for h in hist):
                ax.axvline(max(before), color="0.5", ls="--", lw=0.8)
                ax.text(max(before), 0.98, label, transform=ax.get_xaxis_transform(), fontsize=6, va="top")
        ax.set_yscale("symlog")
        ax.set_xlabel("step", fontsize=8)
        ax.set_title("DPI loss", fontsize=9)
        ax.tick_params(labelsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
