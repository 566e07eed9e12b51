"""Plots: uv-coverage, images, dirty images (matplotlib, Agg backend, atomic PNG writes)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import ImageGeometry, atomic_path  # noqa: E402
from .observation import Observation  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def plot_uv_coverage(obs: Observation, path: str | Path, title: str | None = None) -> None:
    """uv-coverage coloured by baseline, in G-lambda, with conjugate points."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    names = obs.baseline_names()
    uniq = sorted(set(names))
    cmap = plt.get_cmap("tab20", max(len(uniq), 1))
    for i, bl in enumerate(uniq):
        m = np.array([n == bl for n in names])
        u, v = obs.u[m] / 1e9, obs.v[m] / 1e9
        ax.scatter(np.r_[u, -u], np.r_[v, -v], s=6, color=cmap(i), label=bl)
    lim = 1.05 * max(obs.uvdist.max() / 1e9, 1e-3)
    ax.set_xlim(lim, -lim)  # u increases to the east (left), as in ehtim
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("u (G$\\lambda$)")
    ax.set_ylabel("v (G$\\lambda$)")
    ax.set_title(title or f"{obs.source}: {obs.n_vis} visibilities, {obs.n_baselines} baselines")
    if len(uniq) <= 40:
        ax.legend(fontsize=5, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, path)


def plot_image(
    image: np.ndarray, geom: ImageGeometry, path: str | Path, title: str = "", unit: str = "Jy/pixel", cmap="afmhot"
) -> None:
    """An image with sky axes in microarcseconds (east to the left, north up)."""
    half = geom.fov_uas / 2
    fig, ax = plt.subplots(figsize=(5, 4.3))
    im = ax.imshow(image, origin="upper", extent=(half, -half, -half, half), cmap=cmap)
    ax.set_xlabel("relative RA ($\\mu$as)")
    ax.set_ylabel("relative Dec ($\\mu$as)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=unit)
    save_figure(fig, path)


def plot_images(panels: list[tuple[np.ndarray, str]], geom: ImageGeometry, path: str | Path) -> None:
    """Several images side by side with shared sky axes."""
    half = geom.fov_uas / 2
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    for ax, (img, title) in zip(np.atleast_1d(axes), panels):
        im = ax.imshow(img, origin="upper", extent=(half, -half, -half, half), cmap="afmhot")
        ax.set_title(title)
        ax.set_xlabel("relative RA ($\\mu$as)")
        fig.colorbar(im, ax=ax, fraction=0.046)
    np.atleast_1d(axes)[0].set_ylabel("relative Dec ($\\mu$as)")
    save_figure(fig, path)
