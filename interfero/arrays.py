"""Telescope arrays: station tables with ITRF positions and SEFDs.

A station has a name, geocentric ITRF coordinates x, y, z in metres, system
equivalent flux densities (SEFD) for right and left circular polarisation in
Jy, and elevation limits in degrees. Arrays come from

- the built-in tables in ``data/arrays/`` (``EHT2017``, ``EHT2018``,
  ``ngEHT``), in the project's CSV format (see ``data/README.md``);
- ehtim-format tables (whitespace separated ``NAME X Y Z SEFDR SEFDL ...`` or
  ``NAME X Y Z SEFD``);
- user CSV files (the project format) or YAML files (a list of stations, or a
  mapping with key ``stations``);
- any of these edited by name: ``EHT2017-JCMT-SPT`` drops stations,
  ``EHT2017+KP+PDB`` adds stations of the built-in tables (the first table that
  has the name, in the order of ``BUILTIN_ARRAYS``); the result must keep at
  least 3 sites (stations within ``SITE_RADIUS_M`` of each other are one site).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datafiles import data_path
from .errors import InterferoError

BUILTIN_ARRAYS = ("EHT2017", "EHT2018", "ngEHT")

CSV_COLUMNS = ("name", "x_m", "y_m", "z_m", "sefd_r_jy", "sefd_l_jy", "elev_min_deg", "elev_max_deg")
_REQUIRED = ("name", "x_m", "y_m", "z_m")
DEFAULT_ELEV_MIN_DEG = 10.0
DEFAULT_ELEV_MAX_DEG = 85.0
SITE_RADIUS_M = 5000.0  # stations closer than this are one site (ALMA/APEX, SMA/JCMT)


@dataclass(frozen=True)
class Station:
    """One station: ITRF position (m), SEFDs (Jy), elevation limits (deg)."""

    name: str
    x: float
    y: float
    z: float
    sefd_r: float
    sefd_l: float
    elev_min: float = DEFAULT_ELEV_MIN_DEG
    elev_max: float = DEFAULT_ELEV_MAX_DEG

    @property
    def xyz(self) -> np.ndarray:
        return np.array([self.x, self.y, self.z])


@dataclass(frozen=True)
class Array:
    """An ordered, validated collection of stations."""

    stations: tuple[Station, ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        _validate(self.stations, self.name)

    def __len__(self) -> int:
        return len(self.stations)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stations)

    @property
    def xyz(self) -> np.ndarray:
        """(S, 3) ITRF positions in metres."""
        return np.array([s.xyz for s in self.stations], dtype=float)

    @property
    def sefd(self) -> np.ndarray:
        """(S, 2) SEFDs (R, L) in Jy."""
        return np.array([[s.sefd_r, s.sefd_l] for s in self.stations], dtype=float)

    @property
    def elev_limits(self) -> np.ndarray:
        """(S, 2) minimum and maximum elevation in degrees."""
        return np.array([[s.elev_min, s.elev_max] for s in self.stations], dtype=float)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise InterferoError(
                f"unknown station {name!r} in array {self.name!r} (stations: {', '.join(self.names)})"
            ) from None

    def subset(self, names: list[str] | tuple[str, ...]) -> Array:
        """The stations named, in this array's order; unknown names are an error."""
        idx = sorted({self.index(n) for n in names})
        return Array(tuple(self.stations[i] for i in idx), name=f"{self.name}[{','.join(names)}]")

    def sorted_by_sefd(self) -> Array:
        """Stations ordered from most to least sensitive (as ehtim orders its tables).

        The first station is the reference of the minimal closure sets.
        """
        key = [np.hypot(s.sefd_r, s.sefd_l) for s in self.stations]
        order = sorted(range(len(self.stations)), key=lambda i: key[i])
        return Array(tuple(self.stations[i] for i in order), name=self.name)

    def to_csv(self) -> str:
        """The table in the project's CSV format."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for s in self.stations:
            w.writerow([s.name, repr(s.x), repr(s.y), repr(s.z), s.sefd_r, s.sefd_l, s.elev_min, s.elev_max])
        return out.getvalue()


def _validate(stations: tuple[Station, ...], label: str) -> None:
    if len(stations) == 0:
        raise InterferoError(f"array {label!r} has no stations")
    seen: set[str] = set()
    for s in stations:
        if not s.name or any(c.isspace() for c in s.name):
            raise InterferoError(f"array {label!r}: station name {s.name!r} is empty or has spaces")
        if s.name in seen:
            raise InterferoError(f"array {label!r}: duplicate station name {s.name!r}")
        seen.add(s.name)
        if not np.all(np.isfinite([s.x, s.y, s.z])):
            raise InterferoError(f"array {label!r}: station {s.name!r} has non-finite coordinates")
        if np.linalg.norm([s.x, s.y, s.z]) < 1.0:
            raise InterferoError(
                f"array {label!r}: station {s.name!r} is at the geocentre (space stations are not supported)"
            )
        if not (np.isfinite(s.sefd_r) and np.isfinite(s.sefd_l)) or s.sefd_r <= 0 or s.sefd_l <= 0:
            raise InterferoError(f"array {label!r}: station {s.name!r} has a non-positive or non-finite SEFD")
        if not (-90.0 <= s.elev_min < s.elev_max <= 90.0):
            raise InterferoError(f"array {label!r}: station {s.name!r} has invalid elevation limits")


def _station_from_mapping(row: dict, label: str, lineno: int | str) -> Station:
    unknown = set(row) - set(CSV_COLUMNS)
    if unknown:
        raise InterferoError(
            f"array table {label}: unknown column(s) {', '.join(sorted(map(str, unknown)))} "
            f"(expected {', '.join(CSV_COLUMNS)})"
        )
    missing = [c for c in _REQUIRED if row.get(c) in (None, "")]
    if missing:
        raise InterferoError(f"array table {label}, entry {lineno}: missing {', '.join(missing)}")
    try:
        sefd_r = float(row.get("sefd_r_jy") or row.get("sefd_l_jy") or 0.0)
        sefd_l = float(row.get("sefd_l_jy") or sefd_r)
        return Station(
            name=str(row["name"]).strip(),
            x=float(row["x_m"]),
            y=float(row["y_m"]),
            z=float(row["z_m"]),
            sefd_r=sefd_r,
            sefd_l=sefd_l,
            elev_min=float(row.get("elev_min_deg") or DEFAULT_ELEV_MIN_DEG),
            elev_max=float(row.get("elev_max_deg") or DEFAULT_ELEV_MAX_DEG),
        )
    except (TypeError, ValueError) as err:
        raise InterferoError(f"array table {label}, entry {lineno}: not a number ({err})") from None


def read_csv(path: str | Path, name: str | None = None) -> Array:
    """Read the project's CSV format (``#`` lines are comments)."""
    path = Path(path)
    text = _read_text(path)
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InterferoError(f"array table {path}: no header and no stations")
    reader = csv.DictReader(lines)
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    if "name" not in header:
        raise InterferoError(f"array table {path}: header must start with {', '.join(CSV_COLUMNS)}")
    stations = []
    for i, row in enumerate(reader, start=2):
        if None in row:
            raise InterferoError(f"array table {path}, line {i}: more fields than columns")
        stations.append(_station_from_mapping({k: (v or "").strip() for k, v in row.items()}, str(path), i))
    return Array(tuple(stations), name=name or path.stem)


def read_yaml(path: str | Path, name: str | None = None) -> Array:
    """Read a YAML list of stations (keys as in the CSV format)."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as err:
        raise InterferoError(f"array table {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if isinstance(doc, dict) and "stations" in doc:
        name = name or doc.get("name")
        doc = doc["stations"]
    if not isinstance(doc, list) or not all(isinstance(d, dict) for d in doc):
        raise InterferoError(f"array table {path}: expected a list of stations (mappings)")
    stations = [_station_from_mapping(d, str(path), i + 1) for i, d in enumerate(doc)]
    return Array(tuple(stations), name=name or path.stem)


def read_ehtim(path: str | Path, name: str | None = None) -> Array:
    """Read an ehtim-format station table (``NAME X Y Z SEFDR [SEFDL ...]``)."""
    path = Path(path)
    stations = []
    for i, line in enumerate(_read_text(path).splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        f = line.split()
        if len(f) < 5:
            raise InterferoError(f"array table {path}, line {i}: expected NAME X Y Z SEFD, got {len(f)} fields")
        try:
            x, y, z, sr = (float(v) for v in f[1:5])
            sl = float(f[5]) if len(f) > 5 else sr
        except ValueError:
            raise InterferoError(f"array table {path}, line {i}: coordinates and SEFDs must be numbers") from None
        stations.append(Station(f[0], x, y, z, sr, sl))
    if not stations:
        raise InterferoError(f"array table {path}: no stations")
    return Array(tuple(stations), name=name or path.stem)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise InterferoError(f"array table {path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InterferoError(f"array table {path}: not a text file") from None


def n_sites(array: Array) -> int:
    """Distinct sites: stations within ``SITE_RADIUS_M`` of each other count once."""
    xyz = array.xyz
    site = list(range(len(xyz)))
    for i in range(len(xyz)):
        for j in range(i):
            if np.linalg.norm(xyz[i] - xyz[j]) < SITE_RADIUS_M:
                site[i] = site[j]
                break
    return len(set(site))


def _edited_array(spec: str) -> Array | None:
    """``BASE(+NAME|-NAME)...`` (module docstring), or None when ``spec`` has no edits."""
    import re

    parts = re.split(r"(?=[+-])", spec)
    base, edits = parts[0], [p for p in parts[1:] if p]
    if not edits or not base:
        return None
    if any(len(e) < 2 for e in edits):
        raise InterferoError(f"array {spec!r}: an edit is +STATION or -STATION")
    array = load_array(base)
    catalogue: dict[str, Station] = {}
    for b in BUILTIN_ARRAYS:
        for st in load_array(b).stations:
            catalogue.setdefault(st.name, st)
    stations = list(array.stations)
    for e in edits:
        name = e[1:]
        have = [st.name for st in stations]
        if e[0] == "-":
            if name not in have:
                raise InterferoError(f"array {spec!r}: cannot remove unknown station {name!r}"
                                     f" (stations: {', '.join(have)})")
            stations = [st for st in stations if st.name != name]
        else:
            if name not in catalogue:
                raise InterferoError(
                    f"array {spec!r}: unknown station {name!r} (known: {', '.join(sorted(catalogue))})")
            if name not in have:
                stations.append(catalogue[name])
    if not stations:
        raise InterferoError(f"array {spec!r} has no stations left")
    out = Array(tuple(stations), name=spec)
    if n_sites(out) < 3:
        raise InterferoError(f"array {spec!r} has {n_sites(out)} sites; closure phases need at least 3")
    return out


def load_array(spec: str | Path | Array) -> Array:
    """An array by built-in name (``EHT2017``, ``EHT2018``, ``ngEHT``) or file path, optionally edited
    (``EHT2017-JCMT+KP``: module docstring).

    Files ending in ``.csv`` are read in the project's format, ``.yaml``/``.yml``
    as YAML, anything else as an ehtim table.
    """
    if isinstance(spec, Array):
        return spec
    s = str(spec)
    for b in BUILTIN_ARRAYS:
        if s.lower() == b.lower():
            return read_csv(data_path("arrays", f"{b}.csv"), name=b)
    p = Path(s)
    if not p.exists():
        edited = _edited_array(s)
        if edited is not None:
            return edited
        raise InterferoError(f"unknown array {s!r}: not a built-in ({', '.join(BUILTIN_ARRAYS)}) and no such file")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return read_csv(p)
    if suffix in (".yaml", ".yml"):
        return read_yaml(p)
    return read_ehtim(p)
