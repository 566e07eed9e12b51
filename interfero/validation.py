"""The checks every subcommand runs before it allocates or writes anything.

- numbers: argparse types that refuse non-finite and out-of-range values (:func:`number`,
  :func:`positive`, :func:`nonnegative`, :func:`fraction`, :func:`count`, :func:`seed`);
- output paths: :func:`check_output_folder` and :func:`check_output_file` refuse a path that cannot be
  created or written (a file where a folder is expected and the reverse, ``/proc``, an empty path) and
  a folder that holds an earlier run's results (unless ``--overwrite``); nothing is created until the
  job has its results (:func:`make_output_folder`);
- memory: :func:`check_memory` refuses a job whose estimated working set exceeds the memory this
  machine has, with the estimate in the message, rather than allocating it.

Every refusal is an :class:`interfero.errors.InterferoError` (one line, exit status 2 from the CLI).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import InterferoError

SEED_MAX = 2**32 - 1


def number(kind: type = float, minimum: float | None = None, maximum: float | None = None,
           open_min: bool = False, open_max: bool = False) -> Callable[[str], float | int]:
    """An argparse type: a finite ``kind`` in ``[minimum, maximum]`` (``open_min`` / ``open_max`` exclude
    the ends)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        if minimum is not None and (value < minimum or (open_min and value == minimum)):
            raise argparse.ArgumentTypeError(f"must be {'>' if open_min else '>='} {minimum:g}, got {text}")
        if maximum is not None and (value > maximum or (open_max and value == maximum)):
            raise argparse.ArgumentTypeError(f"must be {'<' if open_max else '<='} {maximum:g}, got {text}")
        return value

    return parse


def positive(kind: type = float, maximum: float | None = None) -> Callable[[str], float | int]:
    """A finite value > 0 (``>= 1`` for integers), at most ``maximum``."""
    return number(kind, 1 if kind is int else 0.0, maximum, open_min=kind is not int)


def nonnegative(kind: type = float, maximum: float | None = None) -> Callable[[str], float | int]:
    return number(kind, 0, maximum)


def count(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    return number(int, minimum, maximum)


fraction = number(float, 0.0, 1.0)
seed = number(int, 0, SEED_MAX)


# ---- output paths ----------------------------------------------------------------------------------------------
def _check_writable(folder: Path, what: str) -> None:
    """Probes ``folder`` with a temporary file, removed at once and the folder's times restored (no trace):
    permissions alone do not tell whether ``/proc`` or a read-only mount takes a new file."""
    st = folder.stat()
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".interfero-probe-")
    except OSError as err:
        raise InterferoError(f"{what}: cannot write in {folder} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(name)
    try:
        os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError:
        pass


def _existing_folder_above(path: Path, what: str) -> Path:
    """The nearest existing folder at or above ``path``; a one-line error when that nearest thing is a file."""
    anc = path.absolute()
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise InterferoError(f"{what}: {anc} is a file, not a folder")
    return anc


def check_output_folder(path: str | Path | None, flag: str = "--out", products: Iterable[str] = (),
                        overwrite: bool = False) -> Path:
    """The output folder ``path`` as a :class:`Path`, refusing one that cannot be created or written, a
    file, an empty path, and a folder that holds any of ``products`` (an earlier run's results; globs
    allowed) unless ``overwrite``. Creates nothing."""
    if path is None or not str(path).strip():
        raise InterferoError(f"{flag} is empty: name an output folder")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InterferoError(f"{flag} {out} exists and is a file, not a folder")
    _check_writable(_existing_folder_above(out, f"{flag} {out}"), f"{flag} {out}")
    if out.is_dir() and not overwrite:
        earlier = sorted({p.name for pat in products for p in out.glob(pat)})
        if earlier:
            shown = ", ".join(earlier[:4]) + (", ..." if len(earlier) > 4 else "")
            raise InterferoError(f"{flag} {out} holds results of an earlier run ({shown}); pass --overwrite to"
                                 " replace them, or choose another folder")
    return out


def clear_outputs(out: Path, products: Iterable[str]) -> None:
    """Removes an earlier run's ``products`` (globs) from ``out`` (``--overwrite``), so none is left beside
    the new results."""
    if out.is_dir():
        for pat in products:
            for p in out.glob(pat):
                if p.is_file():
                    p.unlink()


def write_output_text(path: Path, text: str) -> None:
    """Writes ``text`` atomically to a path :func:`check_output_file` accepted, creating its folder."""
    from .io import atomic_write_text

    make_output_folder(path.parent)
    atomic_write_text(path, text)


def make_output_folder(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InterferoError(f"cannot create output folder {out} ({err.strerror or err})") from None
    return out


def check_output_file(path: str | Path | None, flag: str = "--json", must_not_exist: bool = False,
                      overwrite: bool = False, create_parent: bool = False) -> Path:
    """An output file path whose folder exists (or, with ``create_parent``, can be created) and takes new
    files; refuses a folder, an empty path and (``must_not_exist`` without ``overwrite``) an existing file.
    Creates nothing."""
    if path is None or not str(path).strip():
        raise InterferoError(f"{flag} is empty: name an output file")
    p = Path(path)
    if p.is_dir():
        raise InterferoError(f"{flag} {p} is a folder, not a file")
    anc = _existing_folder_above(p.parent, f"{flag} {p}")
    if anc != p.parent.absolute() and not create_parent:
        raise InterferoError(f"{flag} {p}: folder {p.parent} does not exist")
    _check_writable(anc, f"{flag} {p}")
    if must_not_exist and p.exists() and not overwrite:
        raise InterferoError(f"{flag} {p} exists; pass --overwrite to replace it, or choose another name")
    return p


# ---- memory ----------------------------------------------------------------------------------------------------
def available_memory() -> int:
    """Bytes this process may still allocate: ``MemAvailable`` (Linux), else physical memory; the
    environment variable ``INTERFERO_MEMORY_LIMIT_GB`` overrides both."""
    env = os.environ.get("INTERFERO_MEMORY_LIMIT_GB")
    if env:
        return int(float(env) * 2**30)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**40


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def check_memory(nbytes: float, what: str) -> None:
    """Refuses ``what`` when its estimated working set ``nbytes`` exceeds 80% of the available memory
    (sizes below 256 MiB pass without asking the system)."""
    if nbytes < 2**28 and "INTERFERO_MEMORY_LIMIT_GB" not in os.environ:
        return
    limit = 0.8 * available_memory()
    if not nbytes <= limit:
        raise InterferoError(f"{what} would need about {human_bytes(nbytes)} of memory, more than the"
                             f" {human_bytes(limit)} this machine can give; ask for less")
