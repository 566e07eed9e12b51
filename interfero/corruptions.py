"""Corruptions of visibilities: thermal noise, station gains, systematic noise.

All functions take and return :class:`~interfero.observation.Observation`
objects and a ``numpy.random.Generator`` for reproducibility.
"""

from __future__ import annotations

import numpy as np

from .errors import InterferoError
from .observation import Observation


def add_thermal_noise(obs: Observation, rng: np.random.Generator) -> Observation:
    """Add complex Gaussian noise, standard deviation ``sigma`` on real and imaginary parts."""
    noise = rng.standard_normal(obs.n_vis) + 1j * rng.standard_normal(obs.n_vis)
    return obs.with_vis(obs.vis + obs.sigma * noise)


def random_station_gains(
    obs: Observation,
    rng: np.random.Generator,
    amp_std: float = 0.1,
    phase_std_deg: float | None = None,
    per_scan: bool = True,
) -> np.ndarray:
    """Random complex gains ``(n_times, n_stations)`` (one per scan, or constant if not ``per_scan``).

    Amplitudes are ``1 + amp_std * N(0, 1)`` (clipped at 0.1); phases are uniform
    in [-pi, pi) when ``phase_std_deg`` is None, else Gaussian in degrees.
    """
    if amp_std < 0:
        raise InterferoError("gain amplitude scatter must be >= 0")
    nt = obs.n_times if per_scan else 1
    shape = (nt, len(obs.stations))
    amp = np.clip(1.0 + amp_std * rng.standard_normal(shape), 0.1, None)
    if phase_std_deg is None:
        phase = rng.uniform(-np.pi, np.pi, shape)
    else:
        phase = np.radians(phase_std_deg) * rng.standard_normal(shape)
    g = amp * np.exp(1j * phase)
    return g if per_scan else np.repeat(g, obs.n_times, axis=0)


def apply_station_gains(obs: Observation, gains: np.ndarray, scale_sigma: bool = True) -> Observation:
    """Multiply each visibility by ``g_1 conj(g_2)``; ``gains`` is ``(n_times, n_stations)``.

    With ``scale_sigma`` the thermal sigma is scaled by ``|g_1 g_2|`` too (the
    noise is added after the gains in a real correlator).
    """
    gains = np.asarray(gains, dtype=complex)
    if gains.shape != (obs.n_times, len(obs.stations)):
        raise InterferoError(f"gains must have shape ({obs.n_times}, {len(obs.stations)}), got {gains.shape}")
    ti = np.searchsorted(np.unique(obs.time), obs.time)
    g1 = gains[ti, obs.t1]
    g2 = gains[ti, obs.t2]
    factor = g1 * np.conj(g2)
    sigma = obs.sigma * np.abs(factor) if scale_sigma else obs.sigma
    return obs.with_vis(obs.vis * factor, sigma)


def add_systematic_noise(obs: Observation, fraction: float, rng: np.random.Generator | None = None) -> Observation:
    """Fractional systematic noise: sigma becomes ``hypot(sigma, fraction |V|)``.

    With ``rng`` a matching complex Gaussian error of standard deviation
    ``fraction |V|`` is also added to the visibilities.
    """
    if not (fraction >= 0 and np.isfinite(fraction)):
        raise InterferoError("systematic noise fraction must be >= 0")
    extra = fraction * np.abs(obs.vis)
    vis = obs.vis
    if rng is not None:
        vis = vis + extra * (rng.standard_normal(obs.n_vis) + 1j * rng.standard_normal(obs.n_vis))
    sigma = np.hypot(obs.sigma, extra)
    return obs.with_vis(vis, sigma)
