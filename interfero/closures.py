"""Closure index sets and the data products built from visibilities.

Conventions follow ehtim (``Obsdata.c_phases(count='min')`` and
``c_amplitudes(ctype='logcamp', count='min')``):

- At each time the stations present are ordered as in ``Observation.stations``;
  the first is the reference ``r``. The minimal closure-phase set is every
  triangle ``(r, a, b)`` with ``a`` before ``b``; its closure phase is
  ``arg V_ra + arg V_ab + arg V_br``.
- The minimal log-closure-amplitude set is, for ``i >= 3`` and ``1 <= j < i``
  (``k = 1`` if ``j = i - 1`` else ``j + 1``), the quadrangle
  ``(r, s_i, s_j, s_k)``; with ``(0 1 2 3)`` its stations, the value is
  ``log|V_01| + log|V_23| - log|V_03| - log|V_12|``.
- A triangle or quadrangle with a missing baseline is skipped (as ehtim does),
  so a time with missing data can give fewer than the independent count.

Sigma propagation (thermal, first order): closure phase
``sqrt(sum sigma_k^2 / |V_k|^2)`` radians; log closure amplitude
``sqrt(sum 1 / snr_k^2)`` with debiased amplitudes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import InterferoError


@dataclass(frozen=True)
class ClosureIndex:
    """Row indices into an observation for its minimal closure sets.

    ``tri_rows[k]`` are the rows of baselines (r,a), (a,b), (b,r) of triangle k;
    ``tri_sign`` is +1 where the row is stored in that orientation and -1 where
    it is stored reversed (use the conjugate). ``quad_rows[k]`` are the rows of
    (0,1), (2,3), (0,3), (1,2) of quadrangle k.
    """

    tri_rows: np.ndarray
    tri_sign: np.ndarray
    tri_stations: np.ndarray
    tri_time: np.ndarray
    quad_rows: np.ndarray
    quad_stations: np.ndarray
    quad_time: np.ndarray

    @property
    def n_cphase(self) -> int:
        return len(self.tri_rows)

    @property
    def n_logcamp(self) -> int:
        return len(self.quad_rows)


def build_closure_index(obs) -> ClosureIndex:
    """The ehtim-convention minimal closure sets of ``obs`` (done once per observation).

    Two rows of one baseline at one time (in either orientation) are refused: which of them a closure
    used would be arbitrary (average them first, :func:`interfero.averaging.average_coherent`)."""
    ns = len(obs.stations)
    key = np.stack([obs.time, np.minimum(obs.t1, obs.t2) * ns + np.maximum(obs.t1, obs.t2)], 1)
    _, first, counts = np.unique(key, axis=0, return_index=True, return_counts=True)
    if np.any(counts > 1):
        row = first[np.argmax(counts > 1)]
        raise InterferoError(
            f"observation has {int((counts - 1).sum())} duplicate visibility rows (same time and baseline), e.g."
            f" {obs.stations[obs.t1[row]]}-{obs.stations[obs.t2[row]]} at {obs.time[row]:.4f} h; average or"
            " remove them")
    tri_rows, tri_sign, tri_st, tri_t = [], [], [], []
    quad_rows, quad_st, quad_t = [], [], []
    order = np.argsort(obs.time, kind="stable")
    times = obs.time[order]
    bounds = np.flatnonzero(np.diff(times)) + 1
    for group in np.split(order, bounds):
        t = obs.time[group[0]]
        lookup: dict[tuple[int, int], tuple[int, int]] = {}
        for row in group:
            a, b = int(obs.t1[row]), int(obs.t2[row])
            lookup[(a, b)] = (int(row), 1)
            lookup[(b, a)] = (int(row), -1)
        sites = sorted(set(obs.t1[group]) | set(obs.t2[group]))
        if len(sites) < 3:
            continue
        ref, rest = sites[0], sites[1:]
        for i in range(len(rest)):
            for j in range(i + 1, len(rest)):
                tri = (ref, rest[i], rest[j])
                edges = [(tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0])]
                if all(e in lookup for e in edges):
                    tri_rows.append([lookup[e][0] for e in edges])
                    tri_sign.append([lookup[e][1] for e in edges])
                    tri_st.append(tri)
                    tri_t.append(t)
        if len(sites) < 4:
            continue
        for i in range(3, len(sites)):
            for j in range(1, i):
                k = 1 if j == i - 1 else j + 1
                q = (ref, sites[i], sites[j], sites[k])
                edges = [(q[0], q[1]), (q[2], q[3]), (q[0], q[3]), (q[1], q[2])]
                if all(e in lookup for e in edges):
                    quad_rows.append([lookup[e][0] for e in edges])
                    quad_st.append(q)
                    quad_t.append(t)

    def arr(x, width, dtype=np.int64):
        return np.array(x, dtype=dtype).reshape(-1, width)

    return ClosureIndex(
        tri_rows=arr(tri_rows, 3),
        tri_sign=arr(tri_sign, 3),
        tri_stations=arr(tri_st, 3),
        tri_time=np.array(tri_t, dtype=float),
        quad_rows=arr(quad_rows, 4),
        quad_stations=arr(quad_st, 4),
        quad_time=np.array(quad_t, dtype=float),
    )


# ---------------------------------------------------------------- model side
def closure_phase(vis: torch.Tensor, rows: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Closure phases (radians, not wrapped) from complex ``vis`` (..., N)."""
    phase = torch.atan2(vis.imag, vis.real)
    return (phase[..., rows] * sign).sum(-1)


def log_closure_amplitude(amp: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Log closure amplitudes from amplitudes (..., N); ``rows`` is (Q, 4)."""
    la = torch.log(amp)[..., rows]
    return la[..., 0] + la[..., 1] - la[..., 2] - la[..., 3]


# ----------------------------------------------------------------- data side
def debias_amplitude(amp, sigma, force_nonzero: bool = False):
    """Debiased amplitudes ``sqrt(|V|^2 - sigma^2)``; 0 where ``|V| < sigma``.

    With ``force_nonzero`` such points are set to ``sigma`` instead (ehtim's
    choice inside closure amplitudes). Works on numpy arrays and tensors.
    """
    lib = torch if isinstance(amp, torch.Tensor) else np
    amp = lib.abs(amp)
    sigma = lib.abs(sigma)
    deb2 = (amp**2 - sigma**2) * (amp > sigma)
    if force_nonzero:
        deb2 = deb2 + (amp < sigma) * sigma**2
    return lib.sqrt(deb2)


def data_products(vis: torch.Tensor, sigma: torch.Tensor, index: ClosureIndex, products, debias: bool = True):
    """Measured data products from (noisy) complex visibilities ``(..., N)``.

    Returns ``{name: (value, sigma)}`` for ``name`` in ``products`` (``vis``,
    ``amp``, ``cphase``, ``logcamp``); closure phases in radians wrapped to
    (-pi, pi]; amplitudes and log closure amplitudes debiased as ehtim does.
    """
    out = {}
    for name in products:
        if name == "vis":
            out[name] = (vis, sigma)
        elif name == "amp":
            amp = debias_amplitude(vis.abs(), sigma) if debias else vis.abs()
            out[name] = (amp, sigma)
        elif name == "cphase":
            if index.n_cphase == 0:
                raise InterferoError("observation has no closure phases (fewer than 3 stations at every time)")
            rows = torch.as_tensor(index.tri_rows)
            cp = closure_phase(vis, rows, torch.as_tensor(index.tri_sign, dtype=sigma.dtype))
            cp = torch.atan2(torch.sin(cp), torch.cos(cp))
            rel = sigma[rows] / vis.abs()[..., rows]
            out[name] = (cp, torch.sqrt((rel**2).sum(-1)))
        elif name == "logcamp":
            if index.n_logcamp == 0:
                raise InterferoError(
                    "observation has no log closure amplitudes (fewer than 4 stations at every time)"
                )
            rows = torch.as_tensor(index.quad_rows)
            amp = debias_amplitude(vis.abs(), sigma, force_nonzero=True) if debias else vis.abs()
            value = log_closure_amplitude(amp, rows)
            inv2 = (sigma[rows] / amp[..., rows]) ** 2
            if debias:
                value = value + 0.5 * (inv2[..., 0] + inv2[..., 1] - inv2[..., 2] - inv2[..., 3])
            out[name] = (value, torch.sqrt(inv2.sum(-1)))
        else:
            raise InterferoError(f"unknown data product {name!r} (use vis, amp, cphase, logcamp)")
    return out


def _observed(obs, name: str, debias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    vis = torch.tensor(obs.vis)
    sigma = torch.tensor(obs.sigma)
    value, sig = data_products(vis, sigma, obs.closures, [name], debias)[name]
    return value.numpy(), sig.numpy()


def observed_amplitudes(obs, debias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Visibility amplitudes (Jy, debiased by default) and their sigmas."""
    return _observed(obs, "amp", debias)


def observed_closure_phases(obs) -> tuple[np.ndarray, np.ndarray]:
    """Minimal-set closure phases and sigmas, in radians."""
    return _observed(obs, "cphase")


def observed_log_closure_amplitudes(obs, debias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Minimal-set log closure amplitudes and sigmas (debiased as ehtim)."""
    return _observed(obs, "logcamp", debias)
