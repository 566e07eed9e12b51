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
from interfero.validation import check_memory


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
            ds = f["images"]
            if not isinstance(ds, h5py.Dataset):
                raise InterferoError(f"{path}: 'images' is a group, expected an (N, C, H, W) array")
            if ds.dtype.kind not in "fiu":
                raise InterferoError(f"{path}: 'images' holds {ds.dtype} values, expected numbers (float32)")
            if ds.ndim != 4 or 0 in ds.shape:
                raise InterferoError(f"{path}: 'images' must be a non-empty (N, C, H, W) array, got {ds.shape}")
            check_memory(8.0 * ds.size, f"{path}: {ds.shape[0]} images of {ds.shape[-2]}x{ds.shape[-1]}")
            images = np.asarray(ds[...], dtype=np.float32)
            params = f.get("params")
            if params is not None and not (isinstance(params, h5py.Dataset) and params.dtype.kind in "fiu"):
                raise InterferoError(f"{path}: 'params' must be a numeric array")
            out = {
                "images": images,
                "params": None if params is None else np.asarray(params[...]),
                "param_names": _json_attr(params.attrs, "names", "[]", path) if params is not None else [],
                "kind": str(f.attrs.get("kind", "unknown")),
                "fov_uas": _number_attr(f.attrs, "fov_uas", path),
                "units": str(f.attrs.get("units", "")),
                "generator": _json_attr(f.attrs, "generator", "{}", path),
            }
    except OSError as err:
        raise InterferoError(f"{path}: not a readable HDF5 file ({err})") from None
    if images.ndim != 4 or images.shape[0] == 0:
        raise InterferoError(f"{path}: 'images' must be a non-empty (N, C, H, W) array, got {images.shape}")
    if not np.all(np.isfinite(images)):
        raise InterferoError(f"{path}: images contain NaN or infinite values")
    return out


def _json_attr(attrs, name: str, default: str, path):
    try:
        return json.loads(attrs.get(name, default))
    except (json.JSONDecodeError, TypeError) as err:
        raise InterferoError(f"{path}: attribute {name!r} is not valid JSON ({err})") from None


def _number_attr(attrs, name: str, path) -> float:
    try:
        value = float(attrs.get(name, 0.0))
    except (TypeError, ValueError):
        raise InterferoError(f"{path}: attribute {name!r} is not a number") from None
    if not (np.isfinite(value) and value >= 0):
        raise InterferoError(f"{path}: attribute {name!r} must be a finite number >= 0, got {value}")
    return value


def write_dataset(path, d: dict) -> None:
    """Writes a dataset dictionary as made by :func:`priors.datasets.make_dataset`."""
    save_dataset(path, d["images"], d["kind"], d["fov_uas"], d["units"], d.get("params"), d.get("param_names", ()),
                 d.get("generator"))
