"""The restoration table: every method on deblurring, box / random inpainting and denoising of black holes.

    python scripts/restoration_table.py --json OUT.json --md OUT.md [--n 16] [--tasks ...] [--methods ...]
        [--samples 16] [--budget default|short] [--dpi-n 16] [--threads 1] [--work DIR]

Test images: ``--n`` draws of the default prior's training generator (law ``disk-lnflux``, 32x32, 160 uas)
with seed 20261130, which the shipped prior never saw. Tasks (``posterior.restore``, the defaults of
``interfero restore``): ``deblur`` (1.5 px Gaussian, 2% noise), ``box-inpaint`` (centred box of 1/3 of the
side, 2%), ``random-inpaint`` (70% of the pixels missing, 2%), ``denoise`` (10%); the noise percentages are
of the test set's median peak, one operator for all images. DPS, ALD and SDEdit run all images' samples
in one batch; DPI (one flow per image) runs on the first ``--dpi-n`` images. Methods: SDEdit, ALD,
DPS, PnP-ADMM, TV-MAP (the ``tv`` regulariser, weight 1000) and DPI, all with the shipped default prior.

``--budget default`` runs each method with its defaults; ``short`` with fewer steps (DPS 250, ALD 150
levels x 2, SDEdit 200, DPI 300, PnP-ADMM 30 iterations) to fit a small machine;
the JSON records which. Every task and method is saved in ``--work`` as it finishes, so an interrupted
run resumes.

Reports, per task and method, the mean over images of PSNR (dB), SSIM, the runtime per image and, for the
methods with samples, the fraction of truth pixels (above 10% of the peak) inside the 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
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
    from priors.pretrained import training_law

    return make_black_holes(n, 32, 160.0, seed=SEED, law=training_law("default"))[0][:, 0].astype(np.float64)


def task_data(task: str, images: np.ndarray, peak: float, first: int = 0):
    """The task's operator (one for all images: its noise std is the task's percentage of ``peak``, the
    test set's median peak) and each image's data (test images ``first, first + 1, ...``)."""
    from posterior.restore import DEFAULT_NOISE, RestoreSettings, noise_sigma, task_operator

    op = task_operator(RestoreSettings(task=task, seed=0), (1, 32, 32),
                       noise_sigma(DEFAULT_NOISE[task], [peak]))
    ys = [op.sample(torch.tensor(img, dtype=torch.float32)[None, None], torch.Generator().manual_seed(SEED + i))
          for i, img in enumerate(images, start=first)]
    return op, ys


def scores(samples: np.ndarray, img: np.ndarray, with_samples: bool) -> dict:
    from posterior.metrics import interval_coverage, psnr, ssim
    from posterior.summary import summarize

    mean = samples.mean(0).reshape(32, 32)
    row = {"psnr": psnr(mean, img), "ssim": ssim(mean, img)}
    if with_samples:
        post = summarize(samples)
        n2 = (32, 32)
        row["coverage95"] = interval_coverage({"95": (post.lo95.reshape(n2), post.hi95.reshape(n2))},
                                              img)["truth_coverage_95"]
    return row


def run_cases(task: str, method: str, images: np.ndarray, peak: float, samples: int, budget: str,
              threads: int, first: int = 0) -> list[dict]:
    """Rows of one task and method over ``images`` (test images ``first, first + 1, ...``). The sampling
    baselines run every image's independent runs in one batch (same operator; the data repeated per run);
    DPI, PnP-ADMM and TV-MAP run image by image."""
    from posterior.methods import run_method
    from posterior.problem import InverseProblem
    from priors.classical import image_regulariser
    from priors.pretrained import load_prior

    torch.set_num_threads(threads)
    op, ys = task_data(task, images, peak, first)
    opts = dict(SHORT[method]) if budget == "short" else {}
    name = "map" if method == "tv-map" else method
    rows = []
    if name in ("dps", "ald", "sdedit"):
        prior = load_prior("default", elbo={"draws": 2, "importance": True})
        n = len(images)
        y = torch.cat([yy.expand(samples, *yy.shape[1:]) for yy in ys])
        t0 = time.perf_counter()
        post = run_method(name, InverseProblem(op, y, prior),
                          opts | {"n_samples": n * samples, "batch": n * samples, "seed": 0})
        seconds = (time.perf_counter() - t0) / n
        for i in range(n):
            rows.append({"image": i, "task": task, "method": method, "seconds": seconds, "options": opts,
                         "batched_images": n} | scores(post.samples[i * samples:(i + 1) * samples], images[i], True))
        return rows
    for i, img in enumerate(images, start=first):
        if method == "tv-map":
            ref = torch.full((1, 32, 32), max(float(img.sum()), 1e-6) / 1024, dtype=torch.float64)
            prior = image_regulariser("tv", ref, 1000.0)
        else:
            prior = load_prior("default", elbo={"draws": 2, "importance": True})  # as restore and reconstruct
        o = opts | ({"n_samples": samples * 4, "seed": i} if name == "dpi" else {})
        t0 = time.perf_counter()
        post = run_method(name, InverseProblem(op, ys[i - first], prior), o)
        rows.append({"image": i, "task": task, "method": method, "seconds": time.perf_counter() - t0,
                     "options": o} | scores(post.samples.reshape(post.n_samples, -1), img, name == "dpi"))
    return rows


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


def cached(path: Path, run) -> list[dict]:
    """The rows saved at ``path``, or ``run()``'s, saved there atomically."""
    if path.is_file():
        return json.loads(path.read_text())
    rows = run()
    atomic_write_text(path, json.dumps(rows))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--samples", type=int, default=16, help="samples per image of the sampling methods")
    ap.add_argument("--budget", choices=("default", "short"), default="default")
    ap.add_argument("--dpi-n", type=int, default=16, help="images DPI runs on (it fits one flow per image)")
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
    images = test_images(args.n)
    peak = float(np.median(images.reshape(len(images), -1).max(1)))
    rows = []
    for t in tasks:
        for m in methods:
            if m == "dpi":  # one flow per image: saved image by image
                new = []
                for i in range(min(args.dpi_n, args.n)):
                    new += cached(work / f"{t}-{m}-image{i}-s{args.samples}-{args.budget}.json",
                                  partial(run_cases, t, m, images[i:i + 1], peak, args.samples, args.budget,
                                          args.threads, first=i))
            else:
                new = cached(work / f"{t}-{m}-n{args.n}-s{args.samples}-{args.budget}.json",
                             partial(run_cases, t, m, images, peak, args.samples, args.budget, args.threads))
            rows += new
            c = table(new, [t], [m])[t][m]
            print(f"{t:>15} {m:>8}: {c['n_images']} images, PSNR {c['psnr']:.2f}, SSIM {c['ssim']:.3f},"
                  f" {c['seconds_per_image']:.1f} s / image", flush=True)
    tab = table(rows, tasks, methods)
    write_json({"settings": {"n": args.n, "samples": args.samples, "budget": args.budget, "seed": SEED,
                             "law": "disk-lnflux"}, "table": tab}, args.json)
    atomic_write_text(args.md, markdown(tab))
    print(markdown(tab), end="")


if __name__ == "__main__":
    from interfero.errors import run_script

    run_script(main, "restoration_table")
