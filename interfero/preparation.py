"""Preparing an observation for imaging, as the EHT prepares its real data.

:func:`prepare_observation` applies, in this order, and records what it did:

1. **Coherent averaging** (:mod:`interfero.averaging`). ``avg="auto"`` (the
   default) averages per scan when the file holds several integrations of a
   baseline per scan (real correlator output such as the EHT 2017 release's
   10 s points) and leaves one-point-per-scan files (simulations) alone;
   ``"scan"``, a number of seconds, or ``"none"`` / ``0`` choose explicitly.
2. **Zero-baseline flux**: the median amplitude of the intra-site baselines
   (shorter than ``SHORT_BASELINE``: ALMA-APEX, SMA-JCMT) measures the total
   flux of everything the baselines do not resolve, the compact source and,
   for M87, about 0.5 Jy of arcsecond-scale jet that no image of the compact
   field holds. Given ``compact_flux`` (``--flux``), those baselines are
   rescaled to it (visibilities and sigmas; the EHT's own preparation of its
   2017 data), so closure amplitudes that contain them agree with a compact
   image of that flux.
3. **Systematic error budget**: ``sys_noise`` (a fraction of ``|V|``) added in
   quadrature to every sigma, for what the image model cannot fit
   (pixelisation, residual non-closing errors). ``"auto"``: ``REAL_DATA_SYS_NOISE``
   (2%, the EHT's budget for its 2017 M87 imaging) when step 1 found real
   correlator output to average, else 0.

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

SHORT_BASELINE = 1e8  # wavelengths: shorter baselines measure the total flux of a compact source
REAL_DATA_SYS_NOISE = 0.02  # fraction of |V|: --sys-noise auto for files that needed averaging


def zero_baseline_flux(obs: Observation, short: float = SHORT_BASELINE) -> float:
    """Median visibility amplitude (Jy) on baselines shorter than ``short`` wavelengths."""
    m = obs.uvdist < short
    if not m.any():
        raise InterferoError(
            f"cannot measure the total flux: no baseline shorter than {short / 1e6:g} M-lambda in the observation;"
            " give it with --flux JY"
        )
    return float(np.median(np.abs(obs.vis[m])))


def rescale_short_baselines(obs: Observation, flux: float, short: float = SHORT_BASELINE) -> tuple[Observation, float]:
    """``obs`` with the baselines shorter than ``short`` wavelengths scaled so that their median amplitude is
    ``flux`` Jy (sigmas scaled alike), and the factor; unchanged (factor 1) without such baselines."""
    m = obs.uvdist < short
    if not m.any():
        return obs, 1.0
    factor = flux / zero_baseline_flux(obs, short)
    scale = np.where(m, factor, 1.0)
    return obs.with_vis(obs.vis * scale, obs.sigma * scale), float(factor)


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
    sys_noise_reason: str = ""
    zero_baseline_flux_jy: float | None = None  # measured (after averaging), before any rescaling
    short_baselines_scaled_by: float | None = None  # compact_flux / zero_baseline_flux_jy
    dropped_stations: list[str] = field(default_factory=list)
    flagged_points: int = 0
    integrations_per_scan: float = 1.0  # median per baseline and scan, as read (>= 2: real correlator output)

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
        if self.zero_baseline_flux_jy is not None and self.short_baselines_scaled_by is None:
            out.append(f"zero-baseline flux {self.zero_baseline_flux_jy:.3g} Jy (median amplitude of the baselines"
                       f" shorter than {SHORT_BASELINE / 1e6:g} M-lambda)")
        if self.short_baselines_scaled_by is not None:
            out.append(f"zero-baseline flux {self.zero_baseline_flux_jy:.3g} Jy; intra-site baselines scaled by"
                       f" {self.short_baselines_scaled_by:.3g} to the compact flux"
                       f" {self.zero_baseline_flux_jy * self.short_baselines_scaled_by:.3g} Jy (--flux)")
        if self.sys_noise > 0:
            out.append(f"systematic error budget {100 * self.sys_noise:g}% of |V| added in quadrature to sigma"
                       f" ({self.sys_noise_reason})")
        return out


def parse_sys_noise(sys_noise) -> float | None:
    """A fraction in [0, 1), or ``None`` for ``"auto"``."""
    if sys_noise is None or (isinstance(sys_noise, str) and sys_noise.strip().lower() == "auto"):
        return None
    try:
        value = float(sys_noise)
    except (TypeError, ValueError):
        raise InterferoError(f"--sys-noise must be auto or a fraction in [0, 1), got {sys_noise!r}") from None
    if not (math.isfinite(value) and 0 <= value < 1):
        raise InterferoError(f"--sys-noise must be a fraction in [0, 1), got {sys_noise}")
    return value


def prepare_observation(obs: Observation, avg="auto", sys_noise=0.0,
                        compact_flux: float | None = None) -> tuple[Observation, Preparation]:
    """The observation to image and what was done to it (module docstring). ``sys_noise``: a fraction or
    ``"auto"``; ``compact_flux`` (Jy): rescale the intra-site baselines to it."""
    mode = parse_avg(avg)
    sys_frac = parse_sys_noise(sys_noise)
    if compact_flux is not None and not (math.isfinite(compact_flux) and compact_flux > 0):
        raise InterferoError(f"--flux must be > 0 Jy, got {compact_flux}")
    used = set(np.union1d(obs.t1, obs.t2).tolist())
    rep = Preparation(n_vis_read=obs.n_vis, dropped_stations=[s for i, s in enumerate(obs.stations) if i not in used],
                      flagged_points=int(obs.meta.get("flagged_points", 0)))
    per_scan = integrations_per_scan(obs)
    rep.integrations_per_scan = per_scan
    if mode == "auto":
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
    if np.any(obs.uvdist < SHORT_BASELINE):
        rep.zero_baseline_flux_jy = zero_baseline_flux(obs)
        if compact_flux is not None:
            obs, rep.short_baselines_scaled_by = rescale_short_baselines(obs, compact_flux)
    if sys_frac is None:
        real = per_scan >= 2
        sys_frac = REAL_DATA_SYS_NOISE if real else 0.0
        rep.sys_noise_reason = "auto: real correlator output" if real else "auto"
    else:
        rep.sys_noise_reason = "--sys-noise"
    if sys_frac > 0:
        obs = add_systematic_noise(obs, sys_frac)
        rep.sys_noise = float(sys_frac)
    return obs, rep


SAME_FREQUENCY_RTOL = 1e-3  # files whose frequencies differ by more are different bands
SAME_POSITION_DEG = 1.0 / 3600.0
COMBINED_TIME_SEPARATION_H = 1e-7  # 0.36 ms: keeps time stamps of different files apart


def combine_observations(observations: list[Observation], allow_frequencies: bool = False) -> Observation:
    """One observation from several prepared ones (days, bands) of the same source, for one posterior.

    Times become hours since 0h UTC of the earliest file's day; time stamps that two files share (the two
    bands of one night) are kept apart by ``COMBINED_TIME_SEPARATION_H`` per file, so closures are formed
    within a file, never across bands. Stations are matched by name. Files of different sources (name or
    position) are refused; files more than 0.1% apart in frequency are refused unless
    ``allow_frequencies`` (``--combine-frequencies``): the image is then assumed the same at every
    frequency. ``rf`` becomes the mean frequency.
    """
    if len(observations) == 1:
        return observations[0]
    first = observations[0]
    for o in observations[1:]:
        far = (abs(o.dec - first.dec) > SAME_POSITION_DEG
               or abs(o.ra - first.ra) * 15.0 * math.cos(math.radians(first.dec)) > SAME_POSITION_DEG)
        if o.source != first.source or far:
            raise InterferoError(f"cannot combine observations of different sources ({first.source} at"
                                 f" {first.ra:.4f} h {first.dec:+.4f} deg and {o.source} at {o.ra:.4f} h"
                                 f" {o.dec:+.4f} deg)")
        if abs(o.rf - first.rf) > SAME_FREQUENCY_RTOL * first.rf and not allow_frequencies:
            raise InterferoError(f"observations are at different frequencies ({first.rf / 1e9:.3f} and"
                                 f" {o.rf / 1e9:.3f} GHz); pass --combine-frequencies to image them as one source")
    mjd0 = min(o.mjd for o in observations)
    names: list[str] = []
    xyz, sefd = [], []
    for o in observations:
        for i, s in enumerate(o.stations):
            if s not in names:
                names.append(s)
                xyz.append(None if o.station_xyz is None else o.station_xyz[i])
                sefd.append(None if o.station_sefd is None else o.station_sefd[i])
    idx = {s: i for i, s in enumerate(names)}
    cols: dict[str, list] = {k: [] for k in ("time", "t1", "t2", "u", "v", "vis", "sigma", "tint")}
    for k, o in enumerate(observations):
        remap = np.array([idx[s] for s in o.stations])
        cols["time"].append(o.time + 24.0 * (o.mjd - mjd0) + k * COMBINED_TIME_SEPARATION_H)
        cols["t1"].append(remap[o.t1])
        cols["t2"].append(remap[o.t2])
        for c in ("u", "v", "vis", "sigma", "tint"):
            cols[c].append(getattr(o, c))
    known = all(x is not None for x in xyz)
    return Observation(
        **{k: np.concatenate(v) for k, v in cols.items()}, stations=tuple(names),
        station_xyz=np.array(xyz) if known else None,
        station_sefd=np.array(sefd) if all(x is not None for x in sefd) else None,
        ra=first.ra, dec=first.dec, rf=float(np.mean([o.rf for o in observations])),
        bw=float(sum(o.bw for o in observations)), mjd=mjd0, source=first.source,
        meta={"combined": [o.meta.get("source_file", "") for o in observations]})
