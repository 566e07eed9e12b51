"""The restoration table: every method on deblurring, box / random inpainting and denoising of black holes.

    python scripts/restoration_table.py --json OUT.json --md OUT.md [--n 16] [--tasks ...] [--methods ...]
        [--samples 16] [--budget default|short] [--jobs 1] [--threads 1] [--work DIR]

Test images: ``--n`` draws of the default prior's training generator (law ``disk-lnflux``, 32x32, 160 uas)
with seed 20261130, which the shipped prior never saw. Tasks (``posterior.restore``, the defaults of
``interfero restore``): ``deblur`` (1.5 px Gaussian, 2% noise), ``box-inpaint`` (centred box of 1/3 of the
side, 2%), ``random-inpaint`` (70% of the pixels missing, 2%), ``denoise`` (10%). Methods: SDEdit, ALD,
DPS, PnP-ADMM, TV-MAP (the ``tv`` regulariser, weight 1000) and DPI, all with the shipped default prior.

``--budget default`` runs each method with its defaults; ``short`` with fewer steps (DPS 250, ALD 150
levels x 2, SDEdit 200, DPI 300, PnP-ADMM 30 iterations) to fit a small machine;
the JSON records which. Every case is saved in ``--work`` as it finishes, so an interrupted run resumes.

Reports, per task and method, the mean over images of PSNR (dB), SSIM, the runtime per image and, for the
methods with samples, the fraction of truth pixels (above 10% of the peak) inside the 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from interfero.errors import InterferoError
from interfero.io import atomic_write_text
from posterior.report import write_json

TASKS = ("deblur", "box-inpaint", "random-inpaint", "denoise")
METHODS = ("sdedit", "ald", "dps", "pnp-admm", "tv-map", "dpi")
SEED = 20261130
SHORT = {"dps": {"steps": 250}, "ald": {"levels": 150, "steps_per_level": 2}, "sdedit": {"steps": 200},
         "dpi": {"steps": 300},
         "pnp-admm": {"iterations": 30}, "tv-map": {}}


def test_images(n: int) -> np.ndarray:
    from priors.datasets.blackholes import make_black_holes

    return make_black_holes(n, 32, 160.0, seed=SEED, law="disk-lnflux")[0][:, 0].astype(np.float64)


def one_case(args: tuple) -> dict:
    i, task, method, samples, budget, threads = args
    from posterior.methods import SAMPLING_METHODS, run_method
    from posterior.metrics import interval_coverage, psnr, ssim
    from posterior.problem import InverseProblem
    from posterior.restore import DEFAULT_NOISE, RestoreSettings, noise_sigma, task_operator
    from priors.classical import image_regulariser
    from priors.pretrained import load_prior

    torch.set_num_threads(threads)
    img = test_images(i + 1)[i]
    s = RestoreSettings(task=task, seed=i)
    op = task_operator(s, (1, 32, 32), noise_sigma(DEFAULT_NOISE[task], img))
    y = op.sample(torch.tensor(img, dtype=torch.float32)[None, None], torch.Generator().manual_seed(SEED + i))
    name = "map" if method == "tv-map" else method
    if method == "tv-map":
        ref = torch.full((1, 32, 32), max(float(img.sum()), 1e-6) / 1024, dtype=torch.float64)
        prior = image_regulariser("tv", ref, 1000.0)
    else:
        prior = load_prior("default", elbo={"draws": 2, "importance": True})  # as restore and reconstruct
    opts = dict(SHORT[method]) if budget == "short" else {}
    if name in SAMPLING_METHODS:
        opts |= {"n_samples": samples, "seed": i} | ({"batch": samples} if name != "dpi" else {})
    t0 = time.perf_counter()
    post = run_method(name, InverseProblem(op, y, prior), opts)
    seconds = time.perf_counter() - t0
    mean = post.mean.reshape(32, 32)
    row = {"image": i, "task": task, "method": method, "psnr": psnr(mean, img), "ssim": ssim(mean, img),
           "seconds": seconds, "options": opts}
    if name in SAMPLING_METHODS:
        n2 = (32, 32)
        cov = interval_coverage({"95": (post.lo95.reshape(n2), post.hi95.reshape(n2))}, img)
        row["coverage95"] = cov["truth_coverage_95"]
    return row


def table(rows: list[dict], tasks, methods) -> dict:
    out: dict = {}
    for task in tasks:
        out[task] = {}
        for m in methods:
            r = [x for x in rows if x["task"] == task and x["method"] == m]
            if not r:
                continue
            cell = {"n_images": len(r), "psnr": float(np.mean([x["psnr"] for x in r])),
                    "ssim": float(np.mean([x["ssim"] for x in r])),
                    "seconds_per_image": float(np.median([x["seconds"] for x in r]))}
            if "coverage95" in r[0]:
                cell["coverage95"] = float(np.mean([x["coverage95"] for x in r]))
            out[task][m] = cell
    return out


def markdown(tab: dict) -> str:
    lines = ["| task | method | images | PSNR (dB) | SSIM | s / image | 95% coverage |",
             "|---|---|---|---|---|---|---|"]
    for task, cells in tab.items():
        for m, c in cells.items():
            cov = f"{c['coverage95']:.2f}" if "coverage95" in c else "-"
            lines.append(f"| {task} | {m} | {c['n_images']} | {c['psnr']:.2f} | {c['ssim']:.3f} |"
                         f" {c['seconds_per_image']:.1f} | {cov} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--samples", type=int, default=16, help="samples per image of the sampling methods")
    ap.add_argument("--budget", choices=("default", "short"), default="default")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="outputs/restoration_table")
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    bad = [t for t in tasks if t not in TASKS] + [m for m in methods if m not in METHODS]
    if bad:
        raise InterferoError(f"unknown task or method: {', '.join(bad)}")
    if args.n < 1 or args.samples < 2:
        raise InterferoError("--n must be >= 1 and --samples >= 2")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cases = [(i, t, m) for t in tasks for m in methods for i in range(args.n)]
    rows = []
    todo = []
    for i, t, m in cases:
        f = work / f"{t}-{m}-{i:03d}-{args.budget}.json"
        if f.is_file():
            rows.append(json.loads(f.read_text()))
        else:
            todo.append((i, t, m, args.samples, args.budget, args.threads))
    print(f"{len(rows)} cases done before, {len(todo)} to run", flush=True)

    def save(row: dict) -> None:
        rows.append(row)
        atomic_write_text(work / f"{row['task']}-{row['method']}-{row['image']:03d}-{args.budget}.json",
                          json.dumps(row))
        print(f"{row['task']:>15} {row['method']:>8} image {row['image']:>2}: PSNR {row['psnr']:.2f} SSIM"
              f" {row['ssim']:.3f} ({row['seconds']:.1f} s)", flush=True)

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for row in pool.map(one_case, todo):
                save(row)
    else:
        for case in todo:
            save(one_case(case))
    tab = table(rows, tasks, methods)
    write_json({"settings": {"n": args.n, "samples": args.samples, "budget": args.budget, "seed": SEED,
                             "law": "disk-lnflux"}, "table": tab}, args.json)
    atomic_write_text(args.md, markdown(tab))
    print(markdown(tab), end="")


if __name__ == "__main__":
    from interfero.errors import run_script

    run_script(main, "restoration_table")
