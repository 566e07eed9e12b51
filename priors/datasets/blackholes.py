"""Synthetic black-hole images: rings, crescents and m-rings with turbulence, floors and blobs.

Each image is drawn from a documented parameter distribution (all angles in
degrees east of north, sizes in microarcseconds, fluxes in Jy):

- ``kind``: 0 ring, 1 crescent (``1 + asymmetry cos(phi - pa)``), 2 m-ring
  (azimuthal modes m = 1..3 with random amplitudes and phases);
- ``diameter`` ~ U(20, 60), ``width`` (radial FWHM) ~ U(3, 0.4 diameter),
  centre offset ``x0, y0`` ~ U(-5, 5) each;
- brightness modulated by a log-normal Gaussian random field
  ``exp(s G - s^2 / 2)`` (power spectrum ``k^-3``, unit variance ``G``),
  ``s`` ~ U(0, 1) for 70% of the images, else 0;
- with probability 0.5 a centred Gaussian floor (FWHM ~ U(20, 80)) holding a
  fraction ~ U(0, 0.3) of the flux; a Poisson(1) number of compact blobs
  (FWHM ~ U(3, 10), each ~ U(0.02, 0.1) of the flux) within 45 uas of the centre;
- total flux ~ U(0.5, 2.5) Jy.

That is the law ``"v1"``, the set ``bh32`` was trained on (unchanged bit for
bit). Two more laws (``law=`` in :func:`make_black_holes`, ``--law`` of
``interfero make-dataset``) widen it towards GRMHD images, whose faint,
extended, turbulent emission ``v1`` lacks (the shared GRMHD truth has more
pixels above 1.2 mJy than 99.6% of v1's images):

- ``"extended"``: a floor in 85% of the images, holding ~ U(0, 0.6) of the
  flux, FWHM ~ U(30, 110);
- ``"disk"``: the extended floors, plus, with probability 0.6, an
  exponential outer tail ``exp(-(r - d/2) / tail)`` with ``tail`` ~ U(3, 15)
  instead of the ring's outer Gaussian edge (the inner edge stays Gaussian:
  a shadow inside an accretion flow); a brightness asymmetry ~ U(0, 1) for
  every kind (Doppler boosting); the floor centre offset by ~ U(-15, 15) uas
  in each axis; the turbulence modulating the floor as well as the ring; and
  broader blobs (FWHM ~ U(8, 20)), so that a compact dot in a diffuse halo
  is not a typical image (a first version with v1's 3-10 uas blobs and
  tails up to 25 uas made DPI collapse to one bright pixel with 4-5 sites);
- ``"disk-lnflux"``: the disk law with a log-normal total flux (median
  1.4 Jy, sigma of ln flux 0.35; 95% within 0.7-2.8 Jy) in place of the
  box U(0.5, 2.5), whose hard edges a diffusion model of this size does
  not reproduce (docs/priors.md). It is drawn after the other parameters,
  so the other laws' draws are unchanged.
- ``"broad"``: the ``disk-lnflux`` law widened beyond rings (``source``):
  55% ring-family images as above, of which 40% get a jet; 15% ring-family
  images with a jet and counter-jet; 15% double sources (two elliptical
  Gaussian components ``sep`` ~ U(15, 70) uas apart along ``comp_pa``, the
  fainter holding ``ratio`` ~ U(0.2, 1) of the brighter's flux, FWHM ~
  U(8, 25) each, axis ratio ~ U(0.3, 1)); 15% extended elliptical sources
  (FWHM ~ U(20, 80), axis ratio ~ U(0.3, 1)). A jet is an elliptical
  Gaussian from the ring's centre along ``jet_pa`` (length = major FWHM ~
  U(20, 70) uas, minor FWHM ~ U(4, 15)) holding ``jet_fraction`` ~
  U(0.1, 0.6) of the flux (a counter-jet: the mirror image holding
  ``counter_fraction`` ~ U(0.1, 0.5) of the jet's). Turbulence, floors,
  blobs and the log-normal flux apply to every source. Its extra draws come
  after all the others, so its ring-family images start from the
  ``disk-lnflux`` draws.

Images are rendered on a 4x finer grid and averaged down (pixel-integrated),
as ``(N, 1, npix, npix)`` float32 in Jy/pixel, row 0 north, column 0 east.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

KINDS = ("ring", "crescent", "mring")
PARAMS = (
    "kind", "flux", "diameter", "width", "x0", "y0", "asymmetry", "pa",
    "m1_amp", "m1_phase", "m2_amp", "m2_phase", "m3_amp", "m3_phase",
    "grf_strength", "floor_fraction", "floor_fwhm", "n_blobs", "blob_fraction",
    "tail", "floor_dx", "floor_dy",
    "source", "jet_fraction", "jet_pa", "jet_length", "jet_width", "counter_fraction",
    "sep", "ratio", "comp_fwhm1", "comp_fwhm2", "axis_ratio", "comp_pa",
)
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Law:
    """A parameter law of the synthetic black holes (see the module docstring)."""

    floor_prob: float  # probability of a diffuse floor
    floor_max: float  # largest flux fraction in the floor
    floor_fwhm: tuple[float, float]  # floor FWHM range, uas
    tail_prob: float = 0.0  # probability of an exponential outer tail
    tail_uas: tuple[float, float] = (3.0, 25.0)  # its e-folding length, uas
    floor_offset_uas: float = 0.0  # largest floor-centre offset per axis, uas
    asymmetry_all: bool = False  # a brightness asymmetry for every kind, not just crescents
    turbulent_floor: bool = False  # the turbulence modulates the floor too
    blob_fwhm_uas: tuple[float, float] = (3.0, 10.0)  # compact blobs' FWHM range, uas
    flux_lognormal: tuple[float, float] | None = None  # (median Jy, sigma of ln flux) instead of U(0.5, 2.5)
    # probabilities of ring + jet, ring + jet + counter-jet, double and elliptical sources (the rest: rings)
    sources: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


LAWS = {
    "v1": Law(0.5, 0.3, (20.0, 80.0)),
    "extended": Law(0.85, 0.6, (30.0, 110.0)),
    "disk": Law(0.85, 0.6, (30.0, 110.0), tail_prob=0.6, tail_uas=(3.0, 15.0), floor_offset_uas=15.0,
                asymmetry_all=True, turbulent_floor=True, blob_fwhm_uas=(8.0, 20.0)),
}
LAWS["disk-lnflux"] = replace(LAWS["disk"], flux_lognormal=(1.4, 0.35))
LAWS["broad"] = replace(LAWS["disk-lnflux"], sources=(0.22, 0.15, 0.15, 0.15))


def flux_range(law: str = "v1") -> tuple[float, float]:
    """The total fluxes (Jy) of a law's images: the uniform law's bounds, or the log-normal's central 99.7%."""
    lw = get_law(law)
    if lw.flux_lognormal is None:
        return 0.5, 2.5
    median, sigma = lw.flux_lognormal
    return float(median * np.exp(-3 * sigma)), float(median * np.exp(3 * sigma))


def _grid(npix: int, fov_uas: float):
    n = npix * SUPERSAMPLE
    ps = fov_uas / n
    c = (np.arange(n) - (n - 1) / 2) * ps
    x = -c[None, :]  # column 0 is east (positive x)
    y = -c[:, None]  # row 0 is north (positive y)
    return np.broadcast_to(x, (n, n)), np.broadcast_to(y, (n, n))


def get_law(name: str) -> Law:
    if name not in LAWS:
        from interfero.errors import InterferoError

        raise InterferoError(f"unknown black-hole law {name!r} (choose from {', '.join(LAWS)})")
    return LAWS[name]


def _grf(n: int, rng: np.random.Generator, slope: float = 3.0) -> np.ndarray:
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"))
    k[0, 0] = np.inf
    amp = k ** (-slope / 2)
    field = np.fft.ifft2(amp * (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n)))).real
    return (field - field.mean()) / field.std()


def draw_parameters(rng: np.random.Generator, law: str = "v1") -> dict:
    lw = get_law(law)
    kind = int(rng.integers(3))
    diameter = rng.uniform(20, 60)
    p = {
        "kind": kind,
        "flux": rng.uniform(0.5, 2.5),
        "diameter": diameter,
        "width": rng.uniform(3, 0.4 * diameter),
        "x0": rng.uniform(-5, 5),
        "y0": rng.uniform(-5, 5),
        "asymmetry": rng.uniform(0, 1) if kind == 1 else 0.0,
        "pa": rng.uniform(0, 360),
        "grf_strength": rng.uniform(0, 1) if rng.uniform() < 0.7 else 0.0,
        "floor_fraction": rng.uniform(0, lw.floor_max) if rng.uniform() < lw.floor_prob else 0.0,
        "floor_fwhm": rng.uniform(*lw.floor_fwhm),
        "n_blobs": int(rng.poisson(1.0)),
        "blob_fraction": rng.uniform(0.02, 0.1),
    }
    for m, top in ((1, 0.9), (2, 0.4), (3, 0.2)):
        p[f"m{m}_amp"] = rng.uniform(0, top) if kind == 2 else 0.0
        p[f"m{m}_phase"] = rng.uniform(0, 360)
    p["tail"] = p["floor_dx"] = p["floor_dy"] = 0.0
    # draws the v1 law does not make come last, so v1 and extended stay what they were
    if lw.tail_prob > 0 and rng.uniform() < lw.tail_prob:
        p["tail"] = rng.uniform(*lw.tail_uas)
    if lw.asymmetry_all and kind != 1:
        p["asymmetry"] = rng.uniform(0, 1)
    if lw.floor_offset_uas > 0:
        p["floor_dx"], p["floor_dy"] = rng.uniform(-lw.floor_offset_uas, lw.floor_offset_uas, 2)
    if lw.flux_lognormal is not None:
        median, sigma = lw.flux_lognormal
        p["flux"] = float(median * np.exp(sigma * rng.standard_normal()))
    for k in PARAMS[PARAMS.index("source"):]:
        p[k] = 0.0
    if any(lw.sources):
        _draw_source(p, rng, lw.sources)
    return p


def _draw_source(p: dict, rng: np.random.Generator, probs: tuple[float, float, float, float]) -> None:
    """The broad law's source (module docstring), drawn into ``p`` in place."""
    jet, counter, double, ellip = np.cumsum(probs)
    u = rng.uniform()
    if u < counter:
        p["jet_fraction"], p["jet_pa"] = rng.uniform(0.1, 0.6), rng.uniform(0, 360)
        p["jet_length"], p["jet_width"] = rng.uniform(20, 70), rng.uniform(4, 15)
        if u >= jet:
            p["counter_fraction"] = rng.uniform(0.1, 0.5)
    elif u < ellip:
        p["source"] = 1.0 if u < double else 2.0
        p["sep"], p["ratio"] = rng.uniform(15, 70), rng.uniform(0.2, 1)
        p["comp_fwhm1"], p["comp_fwhm2"] = rng.uniform(8, 25, 2) if u < double else rng.uniform(20, 80, 2)
        p["axis_ratio"], p["comp_pa"] = rng.uniform(0.3, 1), rng.uniform(0, 360)


def _ring(p: dict, r: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """The ring family's brightness (unnormalised) at radii ``r`` (uas) and angles ``phi`` about its centre."""
    sig = p["width"] / (2 * np.sqrt(2 * np.log(2)))
    rr = r - p["diameter"] / 2
    ring = np.exp(-0.5 * (rr / sig) ** 2)
    if p["tail"] > 0:
        ring = np.where(rr > 0, np.exp(-np.clip(rr, 0, None) / p["tail"]), ring)
    mod = 1 + p["asymmetry"] * np.cos(phi - np.radians(p["pa"]))
    for m in (1, 2, 3):
        mod = mod + p[f"m{m}_amp"] * np.cos(m * phi - np.radians(p[f"m{m}_phase"]))
    return ring * np.clip(mod, 0, None)


def _ellipse(dx: np.ndarray, dy: np.ndarray, major: float, minor: float, pa: float) -> np.ndarray:
    """An elliptical Gaussian (FWHMs ``major``, ``minor`` in uas, major axis at ``pa`` deg east of north) at the
    origin of the offsets ``dx`` (east), ``dy`` (north), normalised to unit sum."""
    s, c = np.sin(np.radians(pa)), np.cos(np.radians(pa))
    along, across = dx * s + dy * c, dx * c - dy * s
    k = 2 * np.sqrt(2 * np.log(2))
    g = np.exp(-0.5 * ((along / (major / k)) ** 2 + (across / (minor / k)) ** 2))
    return g / g.sum()


def _pair(dx: np.ndarray, dy: np.ndarray, half: float, pa: float, first: tuple[float, float],
          second: tuple[float, float], w2: float) -> np.ndarray:
    """Two elliptical Gaussians (``first``, ``second``: major and minor FWHM, uas; major axes along ``pa``) centred
    ``half`` uas from the origin on either side along ``pa`` (the first towards ``pa``), holding ``1 - w2`` and
    ``w2`` of a unit sum."""
    s, c = np.sin(np.radians(pa)), np.cos(np.radians(pa))
    return ((1 - w2) * _ellipse(dx - half * s, dy - half * c, *first, pa)
            + w2 * _ellipse(dx + half * s, dy + half * c, *second, pa))


def _compact_source(p: dict, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """The broad law's non-ring source (unit sum): two components ``sep`` apart, or one elliptical Gaussian."""
    f1, f2, ar = p["comp_fwhm1"], p["comp_fwhm2"], p["axis_ratio"]
    if p["source"] == 2:
        return _ellipse(dx, dy, f1, f1 * ar, p["comp_pa"])
    return _pair(dx, dy, p["sep"] / 2, p["comp_pa"], (f1, f1 * ar), (f2, f2 * ar), p["ratio"] / (1 + p["ratio"]))


def _jet(p: dict, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """A jet from the origin along ``jet_pa`` and its counter-jet (unit sum)."""
    shape = (p["jet_length"], p["jet_width"])
    return _pair(dx, dy, p["jet_length"] / 2, p["jet_pa"], shape, shape, p["counter_fraction"])


def render_black_hole(p: dict, npix: int, fov_uas: float, rng: np.random.Generator, law: str = "v1") -> np.ndarray:
    """One image (npix, npix) in Jy/pixel from parameters ``p`` (``rng`` draws the field and blobs, whose
    size and the field's reach follow ``law``)."""
    lw = get_law(law)
    x, y = _grid(npix, fov_uas)
    dx, dy = x - p["x0"], y - p["y0"]
    r, phi = np.hypot(dx, dy), np.arctan2(dx, dy)
    img = _ring(p, r, phi) if p["source"] == 0 else _compact_source(p, dx, dy)
    if p["jet_fraction"] > 0:
        img = (1 - p["jet_fraction"]) * img / img.sum() + p["jet_fraction"] * _jet(p, dx, dy)
    n = x.shape[0]
    field = np.exp(p["grf_strength"] * _grf(n, rng) - 0.5 * p["grf_strength"] ** 2) if p["grf_strength"] > 0 else None
    if field is not None and not lw.turbulent_floor:
        img = img * field
    img = img / img.sum()
    if p["floor_fraction"] > 0:
        fs = p["floor_fwhm"] / (2 * np.sqrt(2 * np.log(2)))
        floor = np.exp(-0.5 * (np.hypot(dx - p["floor_dx"], dy - p["floor_dy"]) / fs) ** 2)
        img = (1 - p["floor_fraction"]) * img + p["floor_fraction"] * floor / floor.sum()
    if field is not None and lw.turbulent_floor:
        img = img * field
    for _ in range(p["n_blobs"]):
        rb, ab = 45 * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        bs = rng.uniform(*lw.blob_fwhm_uas) / (2 * np.sqrt(2 * np.log(2)))
        blob = np.exp(-0.5 * ((dx - rb * np.sin(ab)) ** 2 + (dy - rb * np.cos(ab)) ** 2) / bs**2)
        img = img + p["blob_fraction"] * blob / blob.sum()
    img = img.reshape(npix, SUPERSAMPLE, npix, SUPERSAMPLE).sum(axis=(1, 3))
    return img * (p["flux"] / img.sum())


def make_black_holes(n: int, npix: int = 32, fov_uas: float = 160.0, seed: int = 0, progress: bool = False,
                     law: str = "v1"):
    """``n`` images ``(n, 1, npix, npix)`` float32 (Jy/pixel) and their parameters ``(n, len(PARAMS))``
    drawn from the law named ``law`` (:data:`LAWS`)."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    images = np.empty((n, 1, npix, npix), dtype=np.float32)
    params = np.empty((n, len(PARAMS)), dtype=np.float64)
    for i in tqdm(range(n), disable=not progress, desc="black holes"):
        p = draw_parameters(rng, law)
        images[i, 0] = render_black_hole(p, npix, fov_uas, rng, law)
        params[i] = [p[k] for k in PARAMS]
    return images, params
