"""Offline datasets: synthetic black holes, the face-fitted Gaussian, natural-image patches.

:func:`make_dataset` builds any of them by name and :func:`priors.datasets.store.save_dataset`
writes it as HDF5 with its generation settings.
"""

from __future__ import annotations

from interfero.errors import InterferoError

DATASETS = ("blackholes", "face-gaussian", "patches")


def make_dataset(kind: str, n: int, npix: int, fov_uas: float = 160.0, seed: int = 0, progress: bool = False,
                 law: str = "v1") -> dict:
    """``{"images", "params", "param_names", "kind", "fov_uas", "units", "generator"}`` for ``kind``
    (``law``: the black holes' parameter law, see :mod:`priors.datasets.blackholes`)."""
    from interfero.validation import check_memory

    if n <= 0:
        raise InterferoError("dataset size must be > 0")
    if not 4 <= npix:
        raise InterferoError(f"dataset images must be at least 4x4 pixels, got {npix}")
    check_memory(12.0 * n * npix**2, f"{n} images of {npix}x{npix} pixels")
    if kind == "blackholes":
        from interfero.io import ImageGeometry

        ImageGeometry(npix, fov_uas)  # a finite field of view with a sane pixel size
    gen = {"kind": kind, "n": n, "npix": npix, "seed": seed}
    if kind == "blackholes":
        from .blackholes import PARAMS, make_black_holes

        images, params = make_black_holes(n, npix, fov_uas, seed=seed, progress=progress, law=law)
        return {"images": images, "params": params, "param_names": list(PARAMS), "kind": kind,
                "fov_uas": fov_uas, "units": "Jy/pixel", "generator": gen | {"fov_uas": fov_uas, "law": law}}
    if kind == "face-gaussian":
        from .faces import sample_face_gaussian

        images = sample_face_gaussian(n, npix, seed=seed)
        return {"images": images, "params": None, "param_names": [], "kind": kind, "fov_uas": 0.0,
                "units": "intensity", "generator": gen}
    if kind == "patches":
        from .patches import natural_patches

        images = natural_patches(n, npix, seed=seed)
        return {"images": images, "params": None, "param_names": [], "kind": kind, "fov_uas": 0.0,
                "units": "intensity", "generator": gen}
    raise InterferoError(f"unknown dataset {kind!r} (choose from {', '.join(DATASETS)})")
