"""``interfero make-dataset``, ``train-prior``, ``sample-prior`` and ``prior-logp`` (the priors layer's commands).

Each validates its inputs before writing anything; errors are one line (exit 2).
Training under ``torchrun --nproc_per_node=N -m posterior.cli train-prior ...``
runs data-parallel (gloo on CPUs, NCCL on GPUs).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from interfero.errors import InterferoError
from interfero.io import atomic_write_text
from interfero.validation import (
    check_memory,
    check_output_file,
    check_output_folder,
    clear_outputs,
    count,
    fraction,
    make_output_folder,
    nonnegative,
    number,
    positive,
    seed,
    write_output_text,
)

from .datasets import DATASETS
from .datasets.blackholes import LAWS

TRAIN_OUTPUTS = ("checkpoint.json", "ckpt-*.safetensors", "prior.json", "prior.safetensors", "samples-*.png")
SAMPLE_OUTPUTS = ("samples.h5", "samples.png", "summary.json")


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-dataset", help="generate an offline training / validation dataset (HDF5)")
    p.add_argument("kind", choices=DATASETS)
    p.add_argument("--n", type=count(), default=20000, help="number of images")
    p.add_argument("--npix", type=count(4), default=32, help="image size in pixels")
    p.add_argument("--fov", type=positive(), default=160.0, help="field of view in uas (black holes)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--law", choices=tuple(LAWS), default="v1",
                   help="black holes' parameter law (v1: bh32's training set; extended: more, broader floors; "
                        "disk: GRMHD-like exponential tails, offset turbulent floors; "
                        "disk-lnflux: disk with a log-normal total flux, median 1.4 Jy)")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run_make_dataset)

    t = sub.add_parser("train-prior", help="train a score-based prior (denoising score matching)")
    t.add_argument("--data", required=True, help="HDF5 dataset (interfero make-dataset)")
    t.add_argument("--out", required=True, help="output folder (checkpoints, prior.json/.safetensors, samples)")
    t.add_argument("--steps", type=count(), default=20000)
    t.add_argument("--batch-size", type=count(), default=64, help="images per step (per process)")
    t.add_argument("--lr", type=positive(), default=2e-4)
    t.add_argument("--warmup", type=nonnegative(int), default=500, help="linear learning-rate warm-up steps")
    t.add_argument("--grad-clip", type=positive(), default=1.0)
    t.add_argument("--ema", type=number(float, 0, 1, open_min=True, open_max=True), default=0.999,
                   help="EMA decay of the exported weights")
    t.add_argument("--width", type=count(8), default=32, help="U-Net base width")
    t.add_argument("--channel-mult", help="comma-separated width multipliers per resolution, e.g. 1,2,2")
    t.add_argument("--num-res-blocks", type=count(), default=1)
    t.add_argument("--sde", choices=("vp", "subvp", "ve"), default="vp")
    t.add_argument("--eps", type=positive(maximum=0.5), help="smallest diffusion time (default 1e-3; VE 1e-5)")
    t.add_argument("--no-augment", action="store_true", help="no random flips / 90-degree rotations")
    t.add_argument("--ckpt-every", type=count(), default=500)
    t.add_argument("--sample-every", type=nonnegative(int), default=2000, help="sample grid every N steps (0: never)")
    t.add_argument("--seed", type=seed, default=0)
    t.add_argument("--threads", type=count(), help="torch CPU threads")
    t.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="after warm-up: constant, or cosine decay to --lr-min over --steps")
    t.add_argument("--lr-min", type=nonnegative(), default=0.0, help="final learning rate of the cosine schedule")
    t.add_argument("--likelihood-fraction", type=fraction, default=0.0,
                   help="fraction of each batch with t drawn from g^2/std^2 (likelihood weighting; 0: uniform t)")
    t.add_argument("--no-output-norm", action="store_true",
                   help="no GroupNorm before the U-Net's output convolution (an experiment; worse on faces16)")
    t.add_argument("--global-rank", type=nonnegative(int), default=0,
                   help="add a time-modulated rank-R linear map over all pixels to the U-Net's output (0: none;"
                   " with --init from a prior without one, the branch is added and starts at zero)")
    t.add_argument("--image-weight-cap", type=number(float, 1), default=1.0,
                   help="weight each image's loss by min(1 + std^2/alpha^2, CAP) (v-prediction's weighting of"
                   " image errors, capped; 1: plain noise prediction)")
    t.add_argument("--antithetic", action="store_true",
                   help="noise z and -z at the same t for each image (half as many images per batch; lower"
                   " gradient variance at small t)")
    t.add_argument("--init", help="start from this prior's weights (NAME.json + NAME.safetensors): fine-tuning;"
                   " its architecture, SDE and data transform are kept")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.json")
    t.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out (its checkpoints too)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=run_train_prior)

    s = sub.add_parser("sample-prior", help="draw images from a score prior (reverse SDE)")
    s.add_argument("--prior", default="default",
                   help="shipped prior name (default = bh32lnflux; bh32disk, bh32, ...) or path")
    s.add_argument("--n", type=count(), default=16)
    s.add_argument("--steps", type=count(), default=500, help="reverse-SDE steps")
    s.add_argument("--seed", type=seed, default=0)
    s.add_argument("--out", required=True, help="output folder (samples.h5, samples.png)")
    s.add_argument("--overwrite", action="store_true", help="replace the samples of an earlier run in --out")
    s.set_defaults(func=run_sample_prior)

    q = sub.add_parser("prior-logp", help="log p of FITS images under a prior, beside fresh training images"
                       " (is an image in distribution?)")
    q.add_argument("images", nargs="+", help="FITS images (Jy/pixel; regridded onto the prior's grid)")
    q.add_argument("--prior", default="default",
                   help="shipped prior name (default = bh32lnflux; bh32disk, bh32, ...) or path")
    q.add_argument("--method", choices=("elbo", "ode"), default="elbo",
                   help="ELBO (fast lower bound) or exact PF-ODE log p (Hutchinson, slow)")
    q.add_argument("--draws", type=count(), default=16, help="ELBO draws per image")
    q.add_argument("--probes", type=count(), default=4, help="Hutchinson probes of the exact log p")
    q.add_argument("--reference", type=count(2), default=32, help="fresh training images to compare with")
    q.add_argument("--seed", type=seed, default=0)
    q.add_argument("--json", help="write the comparison as JSON")
    q.set_defaults(func=run_prior_logp)


def run_make_dataset(args: argparse.Namespace) -> None:
    from .datasets import make_dataset
    from .datasets.store import write_dataset

    out = check_output_file(args.out, "--out", must_not_exist=True, overwrite=args.overwrite)
    d = make_dataset(args.kind, args.n, args.npix, fov_uas=args.fov, seed=args.seed, progress=True, law=args.law)
    write_dataset(out, d)
    print(f"wrote {out}: {d['images'].shape[0]} images {d['images'].shape[-2]}x{d['images'].shape[-1]} ({args.kind})")


def _channel_mult(text: str | None):
    if not text:
        return None
    try:
        mult = [int(v) for v in text.split(",")]
    except ValueError:
        raise InterferoError(f"--channel-mult must be comma-separated integers, got {text!r}") from None
    if not mult or min(mult) < 1:
        raise InterferoError("--channel-mult values must be >= 1")
    return mult


def run_train_prior(args: argparse.Namespace) -> dict:
    from .pretrained import prior_path
    from .sde import SDES
    from .train import TrainConfig, train

    if args.resume and args.overwrite:
        raise InterferoError("--resume continues the run in --out, --overwrite replaces it: give one of them")
    out = check_output_folder(args.out, "--out", TRAIN_OUTPUTS, args.overwrite or args.resume)
    settings = {} if args.eps is None else {"eps": args.eps}
    sde = SDES[args.sde](**settings).config()  # validates before anything is written
    cfg = TrainConfig(
        data=str(args.data), out=str(args.out), steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup=args.warmup, grad_clip=args.grad_clip, ema_decay=args.ema, width=args.width,
        channel_mult=_channel_mult(args.channel_mult), num_res_blocks=args.num_res_blocks, sde=sde,
        augment=not args.no_augment, ckpt_every=args.ckpt_every, sample_every=args.sample_every, seed=args.seed,
        threads=args.threads, lr_schedule=args.lr_schedule, lr_min=args.lr_min,
        likelihood_fraction=args.likelihood_fraction, image_weight_cap=args.image_weight_cap,
        antithetic=args.antithetic,
        output_norm=not args.no_output_norm, global_rank=args.global_rank,
        init=str(prior_path(args.init)) if args.init else None,
    )
    if args.overwrite:
        clear_outputs(out, TRAIN_OUTPUTS)
    result = train(cfg, resume=args.resume, progress=not args.no_progress)
    print(json.dumps(result))
    return result


def run_sample_prior(args: argparse.Namespace) -> None:
    import torch

    from .datasets.store import save_dataset
    from .pretrained import load_prior
    from .train import _grid_figure

    out = check_output_folder(args.out, "--out", SAMPLE_OUTPUTS, args.overwrite)
    prior = load_prior(args.prior)
    check_memory(8.0 * args.n * math.prod(prior.image_shape), f"--n {args.n} samples of {prior.image_shape}")
    x = prior.sample(args.n, steps=args.steps, generator=torch.Generator().manual_seed(args.seed), progress=True)
    images = x.numpy()
    clear_outputs(out, SAMPLE_OUTPUTS)
    make_output_folder(out)
    save_dataset(out / "samples.h5", images, "samples", prior.fov_uas or 0.0,
                 generator={"prior": prior.name, "steps": args.steps, "seed": args.seed})
    from interfero.plotting import save_figure

    save_figure(_grid_figure(images[:64, 0], f"{prior.name}: {args.n} samples"), out / "samples.png")
    atomic_write_text(out / "summary.json", json.dumps({"prior": prior.name, "n": args.n,
                                                        "mean_flux": float(images.sum(axis=(1, 2, 3)).mean())}))
    print(f"wrote {out}/samples.h5, samples.png")


def run_prior_logp(args: argparse.Namespace) -> dict:
    import numpy as np

    from .ood import compare_to_training, image_on_prior_grid
    from .pretrained import load_prior

    if args.json is not None:
        check_output_file(args.json, "--json", create_parent=True)
    prior = load_prior(args.prior, method=args.method, elbo={"draws": args.draws},
                       ode={"probes": args.probes, "gradient": "none", "rtol": 1e-4, "atol": 1e-4})
    images = np.stack([image_on_prior_grid(p, prior) for p in args.images])
    cmp = compare_to_training(prior, images, method=args.method, n_reference=args.reference, seed=args.seed)
    result = {"prior": prior.name} | cmp.as_dict([str(p) for p in args.images])
    ref = result["reference_logp"]
    print(f"{prior.name} {args.method} log p of {cmp.reference.size} training images:"
          f" min {ref['min']:.1f}, median {ref['median']:.1f}, max {ref['max']:.1f}")
    for row in result["images"]:
        flag = "  below every training image: out of distribution" if row["percentile"] == 0 else ""
        print(f"{row['logp']:12.1f}  percentile {row['percentile']:5.2f}  {row['name']}{flag}")
    if args.json:
        write_output_text(Path(args.json), json.dumps(result, indent=2))
    return result
