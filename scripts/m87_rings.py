"""The default reconstruction on every file of the public EHT 2017 M87 release, and its ring features.

    python scripts/m87_rings.py [--data DIR] [--out DIR] [--json OUT.json] [--md OUT.md] [--jobs 2]
        [-- EXTRA reconstruct FLAGS]

Runs ``interfero reconstruct FILE --out OUT/NAME`` with the defaults (plus any
flags after ``--``) on each ``*.uvfits`` in ``--data`` (default
``../shared/data/observations/m87_2017_eht_sr1``), ``--jobs`` at a time with
``--threads 1`` each, and collects from each ``metrics.json`` the ring diameter
(visibility-null and REx peak), width and position angle with their 68%
intervals, the reduced closure chi^2 and the run time. A run whose
``metrics.json`` already exists is not repeated (rerun to resume). Writes the
table as JSON and Markdown (EHT 2019 Paper VI: 42 +- 3 uas).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from interfero.errors import InterferoError, run_script
from interfero.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "observations" / "m87_2017_eht_sr1"


def run_one(path: Path, out: Path, extra: list[str]) -> dict:
    if not (out / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "posterior.cli", "reconstruct", str(path), "--out", str(out), "--quiet",
               "--threads", "1", *extra]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            return {"file": path.name, "error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    m = json.loads((out / "metrics.json").read_text())
    ring = m.get("ring", {})
    averaging = next(iter(m["preparation"].values()))["averaging"] or {}
    row = {"file": path.name, "chi2_cphase": m["chi2_cphase"], "chi2_logcamp": m["chi2_logcamp"],
           "total_flux": m["total_flux"], "runtime_s": m["runtime_s"], "n_vis": averaging.get("n_out")}
    for k in ("diameter_uas", "peak_diameter_uas", "width_uas", "pa_deg", "asymmetry"):
        if k in ring:
            row[k] = {q: ring[k][q] for q in ("median", "lo68", "hi68", "lo95", "hi95")}
    return row


def markdown(rows: list[dict]) -> str:
    def iv(d):
        return f"{d['median']:.1f} [{d['lo68']:.1f}, {d['hi68']:.1f}]"

    lines = ["| file | diameter (uas) | peak diameter (uas) | width (uas) | PA (deg) | chi^2 cphase / logcamp |"
             " time (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['file']} | error: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['file'].replace('_hops_netcal_StokesI.uvfits', '')} | {iv(r['diameter_uas'])} |"
                     f" {iv(r['peak_diameter_uas'])} | {iv(r['width_uas'])} | {iv(r['pa_deg'])} |"
                     f" {r['chi2_cphase']:.2f} / {r['chi2_logcamp']:.2f} | {r['runtime_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default="outputs/m87")
    p.add_argument("--json")
    p.add_argument("--md")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    files = sorted(Path(args.data).glob("*.uvfits"))
    if not files:
        raise InterferoError(f"no .uvfits files in {args.data}")
    if args.jobs < 1:
        raise InterferoError(f"--jobs must be >= 1, got {args.jobs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda f: run_one(f, out / f.stem, extra), files))
    table = markdown(rows)
    print(table)
    if args.json:
        atomic_write_text(args.json, json.dumps({"runs": rows, "extra_flags": extra}, indent=2))
    if args.md:
        atomic_write_text(args.md, table)


if __name__ == "__main__":
    run_script(main, "m87_rings")
