"""Reading and writing uvfits observations and FITS images.

uvfits goes through ehtim (``ehtim.obsdata.load_uvfits`` / ``Obsdata.save_uvfits``),
FITS images through astropy with ehtim's header keywords (CDELT in degrees,
OBSRA in degrees, OBSDEC, FREQ in Hz, MJD) and ehtim's row order (the FITS
array's first row is south; our arrays have row 0 = north). Every write goes to a
temporary file in the target folder and is renamed into place, so a failed
write never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import io as _io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InterferoError
from .observation import Observation
from .units import RAD_PER_DEG, RAD_PER_UAS


@contextlib.contextmanager
def quiet():
    """Silence ehtim's prints and warnings."""
    with contextlib.redirect_stdout(_io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def import_ehtim():
    """Import ehtim without its banner."""
    with quiet():
        import ehtim

    return ehtim


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success rename it to ``path``."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InterferoError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InterferoError(f"cannot write {path}: folder {parent} is not writable")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------ uvfits
def read_uvfits(path: str | Path) -> Observation:
    """Read Stokes I visibilities from a uvfits file into an :class:`Observation`.

    The station order is ehtim's (sorted by SEFD when the file has SEFDs), so
    the minimal closure sets are those of ``ehtim``.
    """
    path = Path(path)
    if not path.is_file():
        raise InterferoError(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
    if path.stat().st_size == 0:
        raise InterferoError(f"{path}: empty file")
    with open(path, "rb") as f:
        head = f.read(80)
    if not head.startswith(b"SIMPLE"):
        raise InterferoError(f"{path}: not a FITS/uvfits file")
    flagged = _check_uvfits_weights(path)
    eh = import_ehtim()
    try:
        with quiet():
            o = eh.obsdata.load_uvfits(str(path), polrep="stokes")
    except Exception as err:  # ehtim raises many kinds on malformed files
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InterferoError(f"{path}: not a readable uvfits file ({msg})") from None
    return observation_from_ehtim(o, source_file=str(path), flagged_points=flagged)


STOKES_I_HANDS = {1: "I", -1: "RR", -2: "LL", -5: "XX", -6: "YY"}  # uvfits STOKES codes that form Stokes I


def stokes_codes(header) -> tuple[int, np.ndarray]:
    """The ``DATA`` axis of a uvfits random-groups header's STOKES axis and its codes
    (1..4 = I, Q, U, V; -1..-4 = RR, LL, RL, LR; -5..-8 = XX, YY, XY, YX)."""
    naxis = int(header.get("NAXIS", 0))
    for n in range(2, naxis + 1):
        if str(header.get(f"CTYPE{n}", "")).strip().upper() == "STOKES":
            k = np.arange(int(header[f"NAXIS{n}"]))
            codes = header.get(f"CRVAL{n}", 1.0) + (k + 1 - header.get(f"CRPIX{n}", 1.0)) * header.get(f"CDELT{n}", 1.0)
            return 1 + naxis - n, np.rint(codes).astype(int)  # DATA is (groups, NAXISn..NAXIS2)
    raise InterferoError("uvfits header has no STOKES axis")


def _check_uvfits_weights(path: Path) -> int:
    """Refuse NaN/infinite Stokes I visibilities or weights (weight = 1/sigma^2: NaN or zero sigma).

    Only the correlations that form Stokes I are checked (I, or the parallel hands RR/LL or XX/YY):
    the cross hands (RL/LR) are ignored, as the reader ignores them (the public EHT release zeroes
    them and their sigmas, so their weights are infinite). Zero or negative weights mean "flagged"
    in uvfits and those points are dropped; a file whose every Stokes I point is flagged is refused.
    Returns the number of points (rows and channels) whose every Stokes I correlation is flagged.
    """
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = hdul[0]
            if not isinstance(hdu, fits.GroupsHDU) or hdu.data is None:
                raise InterferoError(f"{path}: not a uvfits file (no random-groups visibility table)")
            data = np.asarray(hdu.data["DATA"], dtype=float)
            header = hdu.header.copy()
    except InterferoError:
        raise
    except Exception as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InterferoError(f"{path}: not a readable uvfits file ({msg})") from None
    try:
        axis, codes = stokes_codes(header)
    except InterferoError as err:
        raise InterferoError(f"{path}: {err}") from None
    if data.shape[-1] != 3 or data.size == 0 or axis >= data.ndim or data.shape[axis] != len(codes):
        raise InterferoError(f"{path}: uvfits visibility table is empty or malformed")
    hands = [i for i, c in enumerate(codes) if c in STOKES_I_HANDS]
    if not hands:
        raise InterferoError(f"{path}: no Stokes I correlations (I, RR/LL or XX/YY) on its STOKES axis {list(codes)}")
    data = np.take(data, hands, axis=axis)
    vis = data[..., :2]
    wt = data[..., 2]
    names = "/".join(STOKES_I_HANDS[int(codes[i])] for i in hands)
    if np.any(np.isnan(wt)) or np.any(np.isinf(wt)):
        n = int(np.sum(~np.isfinite(wt)))
        raise InterferoError(
            f"{path}: {n} Stokes I ({names}) visibility weights are NaN or infinite (NaN or zero sigma)")
    used = wt > 0
    if not np.any(used):
        raise InterferoError(f"{path}: every Stokes I ({names}) visibility is flagged (no positive weight)")
    if not np.all(np.isfinite(vis[used])):
        raise InterferoError(f"{path}: unflagged Stokes I ({names}) visibilities contain NaN or infinite values")
    return int(np.sum(~used.any(axis=-1)))


def observation_from_ehtim(o, **meta) -> Observation:
    """Convert an ``ehtim.obsdata.Obsdata`` to an :class:`Observation`."""
    d = o.data
    if len(d) == 0:
        raise InterferoError("observation has no visibilities")
    names = [str(s) for s in o.tarr["site"]]
    key = {n: i for i, n in enumerate(names)}
    try:
        t1 = np.array([key[str(s)] for s in d["t1"]])
        t2 = np.array([key[str(s)] for s in d["t2"]])
    except KeyError as err:
        raise InterferoError(f"visibility on station {err} that is not in the antenna table") from None
    xyz = np.stack([o.tarr["x"], o.tarr["y"], o.tarr["z"]], axis=1).astype(float)
    sefd = np.stack([o.tarr["sefdr"], o.tarr["sefdl"]], axis=1).astype(float)
    return Observation(
        time=d["time"], t1=t1, t2=t2, u=d["u"], v=d["v"], vis=d["vis"], sigma=d["sigma"],
        tint=d["tint"], stations=tuple(names), station_xyz=xyz, station_sefd=sefd,
        ra=float(o.ra), dec=float(o.dec), rf=float(o.rf), bw=float(o.bw), mjd=int(o.mjd),
        source=str(o.source), meta=dict(meta),
    )


def observation_to_ehtim(obs: Observation):
    """Convert an :class:`Observation` to an ``ehtim.obsdata.Obsdata`` (Stokes I only)."""
    eh = import_ehtim()
    ehc = eh.const_def
    n = obs.n_vis
    data = np.zeros(n, dtype=ehc.DTPOL_STOKES)
    names = np.array(obs.stations)
    data["time"] = obs.time
    data["tint"] = obs.tint
    data["t1"] = names[obs.t1]
    data["t2"] = names[obs.t2]
    data["tau1"] = 0.0
    data["tau2"] = 0.0
    data["u"] = obs.u
    data["v"] = obs.v
    data["vis"] = obs.vis
    for s in ("sigma", "qsigma", "usigma", "vsigma"):
        data[s] = obs.sigma
    tarr = np.zeros(len(names), dtype=ehc.DTARR)
    tarr["site"] = names
    if obs.station_xyz is not None:
        tarr["x"], tarr["y"], tarr["z"] = obs.station_xyz.T
    if obs.station_sefd is not None:
        tarr["sefdr"], tarr["sefdl"] = obs.station_sefd.T
    with quiet():
        return eh.obsdata.Obsdata(
            obs.ra, obs.dec, obs.rf, obs.bw, data, tarr, source=obs.source, mjd=int(obs.mjd),
            polrep="stokes", timetype="UTC",
        )


def write_uvfits(obs: Observation, path: str | Path) -> None:
    """Write ``obs`` as uvfits (through ehtim), atomically."""
    o = observation_to_ehtim(obs)
    with atomic_path(path, suffix=".uvfits") as tmp, quiet():
        o.save_uvfits(str(tmp))


# ------------------------------------------------------------------ images
@dataclass(frozen=True)
class ImageGeometry:
    """Pixel grid of a square image: ``npix`` pixels over ``fov_uas`` microarcseconds."""

    npix: int
    fov_uas: float
    ra: float = 17.761122472222223
    dec: float = -28.992189444444445
    rf: float = 230e9
    mjd: int = 51544
    source: str = "SgrA"

    def __post_init__(self) -> None:
        if int(self.npix) != self.npix or self.npix < 2:
            raise InterferoError(f"image size must be an integer >= 2, got {self.npix}")
        if not (np.isfinite(self.fov_uas) and self.fov_uas > 0):
            raise InterferoError(f"field of view must be > 0 microarcseconds, got {self.fov_uas}")
        if not self.fov_uas / self.npix >= 1e-6:
            raise InterferoError(f"pixel size {self.fov_uas / self.npix:.3g} uas is below 1e-6 uas: not a sky image")
        from .validation import check_memory

        check_memory(32.0 * self.npix**2, f"a {self.npix}x{self.npix} image (a few float64 working copies)")

    @property
    def psize_rad(self) -> float:
        """Pixel size in radians."""
        return self.fov_uas * RAD_PER_UAS / self.npix

    @property
    def psize_uas(self) -> float:
        return self.fov_uas / self.npix


def read_fits_image(path: str | Path) -> tuple[np.ndarray, ImageGeometry]:
    """Read a square Stokes I FITS image (Jy/pixel) in ehtim's layout.

    Returns the image with row 0 = north, column 0 = east, and its geometry.
    """
    from astropy.io import fits

    path = Path(path)
    if not path.is_file():
        raise InterferoError(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
    try:
        with fits.open(path) as hdul:
            hdu = hdul[0]
            data = np.asarray(hdu.data, dtype=np.float64) if hdu.data is not None else None
            h = hdu.header
    except (OSError, ValueError) as err:
        raise InterferoError(f"{path}: not a readable FITS image ({str(err).splitlines()[0]})") from None
    if data is None:
        raise InterferoError(f"{path}: FITS file has no image in its primary HDU")
    data = np.squeeze(data)
    if data.ndim != 2:
        raise InterferoError(f"{path}: expected a 2-D image, got shape {data.shape}")
    if data.shape[0] != data.shape[1]:
        raise InterferoError(f"{path}: image is not square ({data.shape[0]}x{data.shape[1]})")
    if not np.all(np.isfinite(data)):
        raise InterferoError(f"{path}: image has NaN or infinite pixels")
    cdelt = h.get("CDELT2", h.get("CDELT1"))
    if cdelt is None or not np.isfinite(cdelt) or cdelt == 0:
        raise InterferoError(f"{path}: header has no valid pixel size (CDELT1/CDELT2)")
    npix = data.shape[0]
    psize_rad = abs(float(cdelt)) * RAD_PER_DEG
    ra_deg = h.get("OBSRA", h.get("CRVAL1", 0.0))
    geom = ImageGeometry(
        npix=npix,
        fov_uas=float(f"{psize_rad * npix / RAD_PER_UAS:.12g}"),  # undo degree round-off
        ra=float(ra_deg) * 12.0 / 180.0,
        dec=float(h.get("OBSDEC", h.get("CRVAL2", 0.0))),
        rf=float(h.get("FREQ", 230e9)),
        mjd=int(float(h.get("MJD", 51544))),
        source=str(h.get("OBJECT", "unknown")),
    )
    return data[::-1, :].copy(), geom


def write_fits_image(image: np.ndarray, geom: ImageGeometry, path: str | Path, extra: dict | None = None) -> None:
    """Write a Stokes I image (Jy/pixel, row 0 = north) with an ehtim-compatible header."""
    from astropy.io import fits

    image = np.asarray(image, dtype=np.float64)
    if image.shape != (geom.npix, geom.npix):
        raise InterferoError(f"image shape {image.shape} does not match geometry {geom.npix}x{geom.npix}")
    h = fits.Header()
    h["OBJECT"] = geom.source
    h["CTYPE1"] = "RA---SIN"
    h["CTYPE2"] = "DEC--SIN"
    h["CDELT1"] = -geom.psize_rad / RAD_PER_DEG
    h["CDELT2"] = geom.psize_rad / RAD_PER_DEG
    h["OBSRA"] = geom.ra * 180.0 / 12.0
    h["OBSDEC"] = geom.dec
    h["FREQ"] = geom.rf
    h["CRPIX1"] = geom.npix / 2.0 + 0.5
    h["CRPIX2"] = geom.npix / 2.0 + 0.5
    h["MJD"] = float(geom.mjd)
    h["TELESCOP"] = "VLBI"
    h["BUNIT"] = "JY/PIXEL"
    h["STOKES"] = "I"
    for k, val in (extra or {}).items():
        h[k] = val
    hdu = fits.PrimaryHDU(image[::-1, :], header=h)
    with atomic_path(path, suffix=".fits") as tmp:
        hdu.writeto(tmp, overwrite=True)
