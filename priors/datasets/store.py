"""Datasets on disk: one HDF5 file with ``images`` (N, C, H, W) and the generation record.

Layout: dataset ``images`` (float32), optional ``params`` (N, P) with
attribute ``names``; file attributes ``kind``, ``fov_uas`` (0 when not an
interferometric image), ``units`` and ``generator`` (JSON of the settings that
made it). Files are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from interfero.errors import InterferoError
from interfero.io import atomic_path


def save_dataset(path, images, kind: str, fov_uas: float = 0.0, units: str = "Jy/pixel",
                 params=None, param_names=(), generator: dict | None = None) -> None:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise InterferoError(f"images must be (N, C, H, W), got shape {images.shape}")
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("images", data=images, compression="gzip", compression_opts=4)
            if params is not None:
                d = f.create_dataset("params", data=np.asarray(params, dtype=np.float64))
                d.attrs["names"] = json.dumps(list(param_names))
            f.attrs["kind"] = kind
            f.attrs["fov_uas"] = float(fov_uas)
            f.attrs["units"] = units
            f.attrs["generator"] = json.dumps(generator or {})


def load_dataset(path) -> dict:
    """``{"images": (N, C, H, W) float32, "params": (N, P) or None, "param_names", "kind", "fov_uas", ...}``."""
    path = Path(path)
    if not path.is_file():
        raise InterferoError(f"dataset not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if "images" not in f:
                raise InterferoError(f"{path}: no 'images' dataset (expected an interfero dataset HDF5 file)")
            images = np.asarray(f["images"][...], dtype=np.float32)
            out = {
                "images": images,
                "params": np.asarray(f["params"][...]) if "params" in f else None,
                "param_names": json.loads(f["params"].attrs.get("names", "[]")) if "params" in f else [],
                "kind": str(f.attrs.get("kind", "unknown")),
                "fov_uas": float(f.attrs.get("fov_uas", 0.0)),
                "units": str(f.attrs.get("units", "")),
                "generator": json.loads(f.attrs.get("generator", "{}")),
            }
    except OSError as err:
        raise InterferoError(f"{path}: not a readable HDF5 file ({err})") from None
    if images.ndim != 4 or images.shape[0] == 0:
        raise InterferoError(f"{path}: 'images' must be a non-empty (N, C, H, W) array, got {images.shape}")
    if not np.all(np.isfinite(images)):
        raise InterferoError(f"{path}: images contain NaN or infinite values")
    return out


def write_dataset(path, d: dict) -> None:
    """Writes a dataset dictionary as made by :func:`priors.datasets.make_dataset`."""
    save_dataset(path, d["images"], d["kind"], d["fov_uas"], d["units"], d.get("params"), d.get("param_names", ()),
                 d.get("generator"))
