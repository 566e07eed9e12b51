"""Preparing an observation for imaging, as the EHT prepares its real data.

:func:`prepare_observation` applies, in this order, and records what it did:

1. **Coherent averaging** (:mod:`interfero.averaging`). ``avg="auto"`` (the
   default) averages per scan when the file holds several integrations of a
   baseline per scan (real correlator output such as the EHT 2017 release's
   10 s points) and leaves one-point-per-scan files (simulations) alone;
   ``"scan"``, a number of seconds, or ``"none"`` / ``0`` choose explicitly.
2. **Systematic error budget**: ``sys_noise`` (a fraction of ``|V|``) added in
   quadrature to every sigma, for what the image model cannot fit
   (pixelisation, residual non-closing errors).

Stations of the antenna table that never observed (SPT in the M87 files) are
listed as dropped; points the file flags (non-positive weight) never enter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .averaging import average_coherent, integrations_per_scan, parse_interval
from .corruptions import add_systematic_noise
from .errors import InterferoError
from .observation import Observation


def parse_avg(avg) -> str | float | None:
    """``"auto"``, ``"scan"``, seconds (> 0), or ``None`` for no averaging (``"none"``, ``"0"``, ``0``)."""
    if avg is None:
        return None
    if isinstance(avg, str):
        text = avg.strip().lower()
        if text in ("auto", "scan"):
            return text
        if text in ("none", "off"):
            return None
        try:
            avg = float(text)
        except ValueError:
            raise InterferoError(f"--avg must be auto, scan, none or seconds, got {avg!r}") from None
    if avg == 0:
        return None
    return parse_interval(avg)


@dataclass
class Preparation:
    """What :func:`prepare_observation` did (JSON-ready with :meth:`as_dict`)."""

    n_vis_read: int
    averaging: dict | None = None  # AveragingSummary.as_dict(), None when not averaged
    averaging_reason: str = ""
    sys_noise: float = 0.0
    dropped_stations: list[str] = field(default_factory=list)
    flagged_points: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        """One human line per step."""
        out = []
        if self.flagged_points:
            out.append(f"dropped {self.flagged_points} flagged points (non-positive Stokes I weight)")
        if self.dropped_stations:
            out.append(f"dropped stations without data: {' '.join(self.dropped_stations)}")
        if self.averaging is None:
            out.append(f"no time averaging ({self.averaging_reason})")
        else:
            what = "per scan" if self.averaging["interval"] == "scan" else f"in {self.averaging['interval']} s bins"
            a = self.averaging
            out.append(f"averaged coherently {what} ({self.averaging_reason}): {a['n_in']} -> {a['n_out']}"
                       f" visibilities, median {a['median_points_per_average']:g} points each, median S/N"
                       f" {a['median_snr_in']:.1f} -> {a['median_snr_out']:.1f}")
        if self.sys_noise > 0:
            out.append(f"systematic error budget {100 * self.sys_noise:g}% of |V| added in quadrature to sigma")
        return out


def prepare_observation(obs: Observation, avg="auto", sys_noise: float = 0.0) -> tuple[Observation, Preparation]:
    """The observation to image and what was done to it (module docstring)."""
    mode = parse_avg(avg)
    if not (math.isfinite(sys_noise) and 0 <= sys_noise < 1):
        raise InterferoError(f"--sys-noise must be a fraction in [0, 1), got {sys_noise}")
    used = set(np.union1d(obs.t1, obs.t2).tolist())
    rep = Preparation(n_vis_read=obs.n_vis, dropped_stations=[s for i, s in enumerate(obs.stations) if i not in used],
                      flagged_points=int(obs.meta.get("flagged_points", 0)))
    if mode == "auto":
        per_scan = integrations_per_scan(obs)
        if per_scan >= 2:
            tint = float(np.median(obs.tint)) if np.any(obs.tint > 0) else float("nan")
            mode = "scan"
            rep.averaging_reason = (f"auto: {tint:.3g} s integrations, median {per_scan:g} per baseline and scan;"
                                    " --avg none keeps them")
        else:
            mode = None
            rep.averaging_reason = "auto: one integration per baseline and scan"
    elif mode is None:
        rep.averaging_reason = "--avg none"
    else:
        rep.averaging_reason = f"--avg {mode if mode == 'scan' else f'{mode:g}'}"
    if mode is not None:
        obs, summary = average_coherent(obs, mode)
        rep.averaging = summary.as_dict()
    if sys_noise > 0:
        obs = add_systematic_noise(obs, sys_noise)
        rep.sys_noise = float(sys_noise)
    return obs, rep
