"""uv-coverage of an array observing a source, and radiometer-equation sigmas.

Vectorised over stations and times; matches ``ehtim.array.Array.obsdata``
(same geocentric elevation cut, Greenwich mean sidereal time from astropy,
same baseline orientation ``u = (x1 - x2) . e_u / lambda``).

- Earth rotation: station ITRF vectors rotated about z by the Greenwich hour
  angle of the source ``theta = (GMST - RA)`` (astropy ``sidereal_time('mean')``).
- Projection: ``e_u = z x s / |z x s|``, ``e_v = -(e_u x s)`` with ``s`` the
  unit source vector ``(cos dec, 0, sin dec)`` in the rotated frame.
- Elevation: angle between the station's geocentric position vector and the
  source direction (ehtim's definition), kept where ``elev_min < el < elev_max``
  for both stations.
- Thermal sigma of Stokes I (Jy):
  ``0.5 sqrt(s_RR^2 + s_LL^2)`` with ``s_PP = sqrt(SEFD_1P SEFD_2P / (2 bw tint)) / 0.88``.

Times are ``tstart, tstart + tadv, ...`` (hours UTC, ``tstop`` excluded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import Array, load_array
from .errors import InterferoError
from .observation import Observation
from .units import C_M_PER_S, QUANTIZATION_EFFICIENCY, RAD_PER_DEG, RAD_PER_HOUR_ANGLE

RA_SGRA_H = 17.761122472222223
DEC_SGRA_DEG = -28.992189444444445
RA_M87_H = 12.51373
DEC_M87_DEG = 12.39112


MJD_RANGE = (15020, 88069)  # 1900-01-01 to 2100-01-01

@dataclass(frozen=True)
class ObservingSetup:
    """What, when and how an array observes.

    ``ra`` hours, ``dec`` degrees, ``rf``/``bw`` Hz, ``tstart``/``tstop`` hours
    UTC on day ``mjd``, ``tint`` (integration) and ``tadv`` (cadence between
    scans) seconds; ``elev_min``/``elev_max`` degrees override the station
    table's limits when given.
    """

    ra: float = RA_SGRA_H
    dec: float = DEC_SGRA_DEG
    rf: float = 230e9
    bw: float = 4e9
    tstart: float = 0.0
    tstop: float = 24.0
    tint: float = 60.0
    tadv: float = 600.0
    mjd: int = 57850
    elev_min: float | None = None
    elev_max: float | None = None
    source: str = "SgrA"

    def __post_init__(self) -> None:
        numbers = {"RA": self.ra, "Dec": self.dec, "frequency": self.rf, "bandwidth": self.bw, "tstart": self.tstart,
                   "tstop": self.tstop, "integration time": self.tint, "scan cadence": self.tadv}
        for name, value in numbers.items():
            if not np.isfinite(value):
                raise InterferoError(f"{name} must be finite, got {value}")
        checks = [
            (MJD_RANGE[0] <= self.mjd <= MJD_RANGE[1], f"MJD must be in [{MJD_RANGE[0]}, {MJD_RANGE[1]}] (years"
                                                        f" 1900-2100), got {self.mjd}"),
            (0 <= self.ra < 24, "RA must be in [0, 24) hours"),
            (-90 <= self.dec <= 90, "Dec must be in [-90, 90] degrees"),
            (self.rf > 0, "frequency must be > 0 Hz"),
            (self.bw > 0, "bandwidth must be > 0 Hz"),
            (self.tint > 0, "integration time must be > 0 s"),
            (self.tadv > 0, "scan cadence must be > 0 s"),
            (self.tstop != self.tstart, "observing window is empty (tstart == tstop)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InterferoError(msg)
        from .validation import check_memory

        span = (self.tstop - self.tstart) % 24.0 or 24.0
        n_times = span * 3600.0 / self.tadv
        check_memory(n_times * 4096.0, f"{n_times:.3g} scans ({span:g} h every {self.tadv:g} s)")

    @property
    def times(self) -> np.ndarray:
        tstop = self.tstop + 24.0 if self.tstop < self.tstart else self.tstop
        return np.arange(self.tstart, tstop, self.tadv / 3600.0)


def gmst_hours(time_utc_h: np.ndarray, mjd: int) -> np.ndarray:
    """Greenwich mean sidereal time (hours) at UTC hours ``time_utc_h`` of day ``mjd``."""
    from astropy.time import Time
    from astropy.utils import iers

    iers.conf.auto_download = False  # nothing may download at run time
    t = Time(np.asarray(time_utc_h) / 24.0 + np.floor(int(mjd)), format="mjd", scale="utc")
    return np.asarray(t.sidereal_time("mean", "greenwich").hour)


def source_frame(dec_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit source vector and the (e_u, e_v) projection axes."""
    s = np.array([np.cos(dec_deg * RAD_PER_DEG), 0.0, np.sin(dec_deg * RAD_PER_DEG)])
    eu = np.cross([0.0, 0.0, 1.0], s)
    eu /= np.linalg.norm(eu)
    ev = -np.cross(eu, s)
    return s, eu, ev


def rotated_positions(xyz: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Station positions ``(S, 3)`` rotated about z by angles ``theta`` ``(T,)`` -> ``(T, S, 3)``."""
    c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
    x, y, z = xyz[:, 0][None], xyz[:, 1][None], xyz[:, 2][None]
    rx, ry = c * x - s * y, s * x + c * y
    return np.stack([rx, ry, np.broadcast_to(z, rx.shape)], axis=-1)


def elevation_deg(pos: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Geocentric elevation (degrees) of direction ``s`` seen from positions ``pos`` (..., 3)."""
    cosang = pos @ s / np.linalg.norm(pos, axis=-1)
    return 90.0 - np.degrees(np.arccos(np.clip(cosang, -1.0, 1.0)))


def thermal_sigma(sefd1: np.ndarray, sefd2: np.ndarray, bw: float, tint: float) -> np.ndarray:
    """Stokes I thermal sigma (Jy) from (R, L) SEFDs of the two stations (radiometer equation)."""
    def pol(a, b):
        return np.sqrt(a * b / (2.0 * bw * tint)) / QUANTIZATION_EFFICIENCY

    rr = pol(sefd1[..., 0], sefd2[..., 0])
    ll = pol(sefd1[..., 1], sefd2[..., 1])
    return 0.5 * np.sqrt(rr**2 + ll**2)


def uv_coverage(array: Array | str, setup: ObservingSetup = ObservingSetup()) -> Observation:
    """Baselines, times, (u, v) and thermal sigmas of ``array`` observing with ``setup``.

    Returns an :class:`Observation` with zero visibilities, rows sorted by time
    then baseline (station order of the array, ``t1`` before ``t2``).
    """
    array = load_array(array)
    times = setup.times
    if len(times) == 0:
        raise InterferoError("observing window contains no scan")
    xyz = array.xyz
    theta = np.mod((gmst_hours(times, setup.mjd) - setup.ra) * RAD_PER_HOUR_ANGLE, 2 * np.pi)
    s, eu, ev = source_frame(setup.dec)
    pos = rotated_positions(xyz, theta)  # (T, S, 3)
    el = elevation_deg(pos, s)  # (T, S)
    lim = array.elev_limits
    lo = lim[:, 0] if setup.elev_min is None else np.full(len(array), setup.elev_min)
    hi = lim[:, 1] if setup.elev_max is None else np.full(len(array), setup.elev_max)
    up = (el > lo[None]) & (el < hi[None])
    i1, i2 = np.triu_indices(len(array), k=1)
    keep = up[:, i1] & up[:, i2]  # (T, B)
    ti, bi = np.nonzero(keep)
    if len(ti) == 0:
        raise InterferoError("no baseline sees the source above the elevation limits in this window")
    a, b = i1[bi], i2[bi]
    wvl = C_M_PER_S / setup.rf
    d = (pos[ti, a] - pos[ti, b]) / wvl
    sefd = array.sefd
    sigma = thermal_sigma(sefd[a], sefd[b], setup.bw, setup.tint)
    return Observation(
        time=times[ti], t1=a, t2=b, u=d @ eu, v=d @ ev, vis=np.zeros(len(ti), complex), sigma=sigma,
        tint=np.full(len(ti), setup.tint), stations=array.names, station_xyz=xyz, station_sefd=sefd,
        ra=setup.ra, dec=setup.dec, rf=setup.rf, bw=setup.bw, mjd=int(setup.mjd), source=setup.source,
        meta={"array": array.name},
    )
