"""The ``Observation``: one interferometric data set (Stokes I visibilities).

Rows are visibilities on baselines ``(t1, t2)`` at a time; station indices
refer to ``stations``, whose order matters: as in ehtim, the first station
present at a time is the reference of the minimal closure sets. Arrays are
read-only numpy arrays; every "change" returns a new ``Observation``.

Units: ``time`` hours (UTC) since 0h of ``mjd``; ``tint`` seconds; ``u, v``
wavelengths; ``vis`` and ``sigma`` Jy; ``ra`` hours; ``dec`` degrees; ``rf`` and
``bw`` Hz; station positions metres (ITRF); SEFDs Jy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from .errors import InterferoError


@dataclass(frozen=True, eq=False)
class Observation:
    """Stokes I visibilities with their baselines, times and thermal sigmas."""

    time: np.ndarray
    t1: np.ndarray
    t2: np.ndarray
    u: np.ndarray
    v: np.ndarray
    vis: np.ndarray
    sigma: np.ndarray
    stations: tuple[str, ...]
    tint: np.ndarray | None = None
    station_xyz: np.ndarray | None = None
    station_sefd: np.ndarray | None = None
    ra: float = 17.761122472222223
    dec: float = -28.992189444444445
    rf: float = 230e9
    bw: float = 4e9
    mjd: int = 51544
    source: str = "SgrA"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(np.asarray(self.time))
        conv = {
            "time": float, "t1": np.int64, "t2": np.int64, "u": float, "v": float,
            "vis": np.complex128, "sigma": float,
        }
        for name, dt in conv.items():
            arr = np.array(getattr(self, name), dtype=dt).reshape(-1)
            if len(arr) != n:
                raise InterferoError(f"observation field {name!r} has {len(arr)} entries, expected {n}")
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        tint = np.zeros(n) if self.tint is None else np.array(self.tint, dtype=float).reshape(-1)
        if len(tint) != n:
            raise InterferoError("observation field 'tint' has the wrong length")
        tint.setflags(write=False)
        object.__setattr__(self, "tint", tint)
        object.__setattr__(self, "stations", tuple(str(s) for s in self.stations))
        if n == 0:
            raise InterferoError("observation has no visibilities")
        ns = len(self.stations)
        if len(set(self.stations)) != ns:
            raise InterferoError("observation has duplicate station names")
        if self.t1.min() < 0 or self.t2.min() < 0 or max(self.t1.max(), self.t2.max()) >= ns:
            raise InterferoError("observation refers to a station index outside its station list")
        if np.any(self.t1 == self.t2):
            raise InterferoError("observation has autocorrelations (t1 == t2)")
        for name in ("time", "u", "v"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise InterferoError(f"observation has non-finite {name} values")
        bad = ~np.isfinite(self.sigma) | (self.sigma <= 0)
        if np.any(bad):
            raise InterferoError(
                f"observation has {int(bad.sum())} visibilities with NaN, zero or negative sigma"
            )
        if not np.all(np.isfinite(self.vis)):
            raise InterferoError("observation has non-finite visibilities")
        if not (np.isfinite(self.rf) and self.rf > 0):
            raise InterferoError("observation frequency must be positive")

    # ------------------------------------------------------------------ sizes
    @property
    def n_vis(self) -> int:
        return len(self.time)

    @property
    def n_stations(self) -> int:
        """Stations that appear in the data."""
        return len(np.union1d(self.t1, self.t2))

    @property
    def n_baselines(self) -> int:
        """Distinct station pairs that appear in the data."""
        a = np.minimum(self.t1, self.t2)
        b = np.maximum(self.t1, self.t2)
        return len(np.unique(a * len(self.stations) + b))

    @property
    def n_times(self) -> int:
        return len(np.unique(self.time))

    @property
    def uvdist(self) -> np.ndarray:
        """Baseline length in wavelengths."""
        return np.hypot(self.u, self.v)

    def baseline_names(self) -> list[str]:
        return [f"{self.stations[a]}-{self.stations[b]}" for a, b in zip(self.t1, self.t2)]

    # ------------------------------------------------------------- closures
    @cached_property
    def closures(self):
        """Minimal closure index sets (built once; see :mod:`interfero.closures`)."""
        from .closures import build_closure_index

        return build_closure_index(self)

    # --------------------------------------------------------------- copies
    def with_vis(self, vis: np.ndarray, sigma: np.ndarray | None = None) -> Observation:
        """The same observation with new visibilities (and optionally sigmas)."""
        return replace(self, vis=vis, sigma=self.sigma if sigma is None else sigma)

    def select(self, mask: np.ndarray) -> Observation:
        """The rows where ``mask`` is true."""
        mask = np.asarray(mask)
        keep = {k: getattr(self, k)[mask] for k in ("time", "t1", "t2", "u", "v", "vis", "sigma", "tint")}
        return replace(self, **keep)

    def flag_stations(self, names: list[str]) -> Observation:
        """Drop every visibility involving the named stations."""
        idx = [self.station_index(n) for n in names]
        return self.select(~np.isin(self.t1, idx) & ~np.isin(self.t2, idx))

    def keep_stations(self, names: list[str]) -> Observation:
        """Keep only visibilities between the named stations."""
        idx = [self.station_index(n) for n in names]
        return self.select(np.isin(self.t1, idx) & np.isin(self.t2, idx))

    def station_index(self, name: str) -> int:
        try:
            return self.stations.index(name)
        except ValueError:
            raise InterferoError(
                f"unknown station {name!r} (observation has {', '.join(self.stations)})"
            ) from None

    def summary(self) -> dict:
        """Counts a person (or a tracker) wants to see first."""
        c = self.closures
        return {
            "source": self.source,
            "ra_hours": float(self.ra),
            "dec_deg": float(self.dec),
            "rf_hz": float(self.rf),
            "bw_hz": float(self.bw),
            "mjd": int(self.mjd),
            "stations": [self.stations[i] for i in np.union1d(self.t1, self.t2)],
            "n_stations": self.n_stations,
            "n_baselines": self.n_baselines,
            "n_times": self.n_times,
            "n_vis": self.n_vis,
            "n_cphase": c.n_cphase,
            "n_logcamp": c.n_logcamp,
            "time_range_hours": [float(self.time.min()), float(self.time.max())],
            "max_uvdist_glambda": float(self.uvdist.max() / 1e9),
            "median_snr": float(np.median(np.abs(self.vis) / self.sigma)),
        }
