"""Denoising score matching: the training loop of score priors.

Loss (continuous t, noise prediction): ``E_{t ~ q, z} || net(alpha x + std z, t) - z ||^2``.
With ``q = U(eps, T)`` (default) this is DSM with weighting ``std(t)^2``, the
usual choice for sample quality. ``likelihood_fraction = f`` draws a fraction
``f`` of each batch's ``t`` from ``q(t) ~ g(t)^2 / std(t)^2`` instead (the
ELBO's :class:`priors.elbo.TimeSampler`): with ``f = 1`` the loss is, up to a
constant, the likelihood-weighted DSM of Song, Durkan, Murray & Ermon (2021)
with importance sampling, i.e. minus the ELBO -- it puts the effort on small
``t``, where the exact log p and the ELBO are decided.

In terms of the *image* the noise-prediction loss weights the denoiser's
error ``|E[x0|xt] - x0|^2`` by ``alpha^2 / std^2`` (0.09 at ``t`` = 0.5 and
0.007 at 0.7 for the default VP SDE), so a network can get the total flux of
noisy images badly wrong at large ``t`` at almost no cost.
``image_weight_cap = c > 1`` multiplies each image's loss by
``w(t) = min(1 + std^2 / alpha^2, c)``, divided by the batch mean of ``w``
(so the learning rate keeps its meaning): uncapped, this is the weighting of
v-prediction (image errors weighted by ``alpha^2 / std^2 + 1``, never below 1); the cap keeps
``t`` near ``T`` (where ``w`` reaches ~2e4) from swamping the batch. ``c = 1``
(default) is plain noise prediction. ``antithetic = True`` evaluates each
drawn image twice, with noise ``z`` and ``-z`` at the same ``t`` (half as many
images per batch): still an unbiased estimate of the same loss, but the
gradient's part odd in ``z`` -- the dominant noise at small ``t``, where
``x_t ~ alpha x_0`` and the target is almost all ``z`` -- cancels within each
pair. On ``faces16`` (likelihood-weighted, batch 512) that divides the
gradient variance by 6.6 for the U-Net and 2.0 for the global linear branch
at equal cost; in training it bought less than that ratio, but more per step
than plain noise (docs/priors.md). Adam with linear
warm-up and an optional cosine decay (``lr_schedule="cosine"``, down to
``lr_min``), gradient-norm clipping, EMA weights
(``torch.optim.swa_utils.AveragedModel``), tqdm progress, periodic sample
grids (PNG, reverse SDE from the EMA weights). ``init`` starts from the EMA
weights (and data transform) of an existing prior file pair: fine-tuning.

Reproducible and resumable: the randomness of step ``k`` (batch indices,
flips, t, noise) comes from a generator seeded by ``(seed, rank, k)``, and a
checkpoint holds the network, EMA, optimiser state and step. A checkpoint is
``ckpt-STEP.safetensors`` (written atomically) named by ``checkpoint.json``
(written atomically afterwards), so a kill -9 at any moment leaves the last
complete checkpoint; ``resume=True`` continues from it exactly (same weights as
an uninterrupted run). The EMA network is exported as the prior file pair
``prior.safetensors`` / ``prior.json`` (see :mod:`priors.checkpoint`).

Several processes: launched with ``torchrun --nproc_per_node=N``, the loop uses
``torch.distributed`` (gloo on the CPU, NCCL on GPUs) with
``DistributedDataParallel``; each rank draws its own ``batch_size`` images
(the global batch is ``N * batch_size``) and rank 0 writes every file.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from interfero.errors import InterferoError
from interfero.io import atomic_write_text
from interfero.validation import check_memory

from .checkpoint import (
    file_sha256,
    load_optimizer,
    load_prior_network,
    load_state,
    load_tensors,
    optimizer_tensors,
    read_checkpoint_json,
    save_tensors,
    write_prior,
)
from .datasets.store import load_dataset
from .elbo import TimeSampler
from .networks import UNet, count_parameters
from .sde import SDE, _bcast, sde_from_config


@dataclass
class TrainConfig:
    """Settings of one training run (all saved with the checkpoints)."""

    data: str
    out: str
    steps: int = 20000
    batch_size: int = 64
    lr: float = 2e-4
    warmup: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    width: int = 32
    channel_mult: list[int] | None = None
    num_res_blocks: int = 1
    dropout: float = 0.0
    output_norm: bool = True
    global_rank: int = 0
    sde: dict = field(default_factory=lambda: {"name": "vp", "beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3})
    augment: bool = True
    ckpt_every: int = 500
    sample_every: int = 2000
    sample_steps: int = 200
    log_every: int = 50
    seed: int = 0
    threads: int | None = None
    keep_checkpoints: int = 2
    lr_schedule: str = "constant"
    lr_min: float = 0.0
    likelihood_fraction: float = 0.0
    image_weight_cap: float = 1.0
    antithetic: bool = False
    init: str | None = None

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise InterferoError(f"unknown learning-rate schedule {self.lr_schedule!r}"
                                 f" (choose from {', '.join(LR_SCHEDULES)})")
        if not 0.0 <= self.likelihood_fraction <= 1.0:
            raise InterferoError(f"likelihood fraction must be in [0, 1], got {self.likelihood_fraction}")
        if not 0.0 <= self.lr_min <= self.lr:
            raise InterferoError(f"lr_min must be in [0, lr], got {self.lr_min}")
        if self.global_rank < 0:
            raise InterferoError(f"global rank must be >= 0, got {self.global_rank}")
        if self.antithetic and self.batch_size % 2:
            raise InterferoError(f"antithetic pairs need an even batch size, got {self.batch_size}")
        for name in ("lr", "grad_clip", "lr_min"):
            if not math.isfinite(getattr(self, name)):
                raise InterferoError(f"{name} must be finite, got {getattr(self, name)}")
        if not (self.lr > 0 and self.grad_clip > 0 and 0 < self.ema_decay < 1):
            raise InterferoError("lr and grad_clip must be > 0 and the EMA decay in (0, 1)")
        if self.warmup < 0 or self.sample_every < 0 or self.ckpt_every < 1 or self.width < 8:
            raise InterferoError("warmup and sample_every must be >= 0, ckpt_every >= 1 and width >= 8")
        if not self.image_weight_cap >= 1.0:
            raise InterferoError("image weight cap must be >= 1 (1: plain noise prediction),"
                                 f" got {self.image_weight_cap}")


LR_SCHEDULES = ("constant", "cosine")


def data_transform(images: np.ndarray) -> dict:
    """``z = (x - shift) / scale`` mapping pixel values to about [-1, 1].

    ``lo`` = smallest pixel, ``hi`` = 99.5th percentile of the per-image maxima.
    """
    lo = float(images.min())
    hi = float(np.percentile(images.reshape(images.shape[0], -1).max(axis=1), 99.5))
    if not hi > lo:
        raise InterferoError("training images are constant; nothing to learn")
    return {"shift": 0.5 * (hi + lo), "scale": 0.5 * (hi - lo)}


def training_times(sde: SDE, n: int, generator: torch.Generator | None = None, dtype=torch.float32,
                   likelihood_fraction: float = 0.0, sampler: TimeSampler | None = None) -> torch.Tensor:
    """``n`` diffusion times: the last ``round(f n)`` from ``q(t) ~ g^2 / std^2``, the others ``U(eps, T)``."""
    t = sde.eps + (sde.T - sde.eps) * torch.rand(n, generator=generator, dtype=dtype)
    k = int(round(likelihood_fraction * n))
    if k:
        sampler = sampler or TimeSampler(sde, importance=True)
        t[n - k:] = sampler.sample(k, generator, dtype)[0]
    return t


def image_error_weights(sde: SDE, t: torch.Tensor, cap: float) -> torch.Tensor:
    """``min(1 + std^2 / alpha^2, cap)`` at times ``t`` (``cap = 1``: all ones); ``dsm_loss`` divides by the mean."""
    if cap <= 1.0:
        return torch.ones_like(t)
    alpha, std = sde.coefficients(t)
    return torch.clamp(1 + std**2 / alpha**2, max=cap)


def dsm_loss(net, sde: SDE, z0: torch.Tensor, generator: torch.Generator | None = None,
             device: torch.device | None = None, likelihood_fraction: float = 0.0,
             sampler: TimeSampler | None = None, image_weight_cap: float = 1.0,
             antithetic: bool = False) -> torch.Tensor:
    """Noise-prediction DSM loss per image ``(B,)`` at random ``t`` (see :func:`training_times`).

    ``antithetic``: each image is evaluated twice, with noise ``z`` and ``-z`` at the same ``t``; the result
    is then ``(2B,)`` (the ``+z`` halves first).

    Each image's loss is weighted by :func:`image_error_weights` (all ones unless
    ``image_weight_cap > 1``). ``t`` and the noise are drawn on the CPU from ``generator`` (so a run
    is the same on any device) and moved with the images to ``device``.
    """
    t = training_times(sde, z0.shape[0], generator, z0.dtype, likelihood_fraction, sampler)
    noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype)
    if antithetic:
        z0, t, noise = torch.cat([z0, z0]), torch.cat([t, t]), torch.cat([noise, -noise])
    alpha, std = sde.coefficients(t)
    xt = _bcast(alpha, z0) * z0 + _bcast(std, z0) * noise
    w = image_error_weights(sde, t, image_weight_cap)
    if device is not None:
        xt, t, noise, w = xt.to(device), t.to(device), noise.to(device), w.to(device)
    return w * (net(xt, t) - noise).pow(2).reshape(z0.shape[0], -1).mean(-1) / w.mean()


def _with_init_architecture(config: TrainConfig, record: dict) -> TrainConfig:
    """``config`` with the network and SDE settings of the prior record it starts from (``config.init``)."""
    net = record["network"]
    return replace(config, width=int(net["width"]), channel_mult=list(net["channel_mult"]),
                   num_res_blocks=int(net["num_res_blocks"]), dropout=float(net.get("dropout", 0.0)),
                   output_norm=bool(net.get("output_norm", True)),
                   global_rank=int(net.get("global_rank", 0)) or config.global_rank,
                   sde=dict(record["sde"]))


def _step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + rank) * 10_000_019 + step)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations (the 8 symmetries of the square), per image."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    rot = torch.randint(4, (x.shape[0],), generator=g)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return torch.stack([torch.rot90(xi, int(k), dims=(-2, -1)) for xi, k in zip(x, rot)])


class Trainer:
    """One training run (see the module docstring)."""

    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True) -> None:
        init_net, init_record = load_prior_network(config.init) if config.init else (None, None)
        if init_record is not None:
            config = _with_init_architecture(config, init_record)
        self.cfg = config
        self.out = Path(config.out)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.distributed = self.world > 1
        if config.threads:
            torch.set_num_threads(int(config.threads))
        if config.steps <= 0 or config.batch_size <= 0:
            raise InterferoError("steps and batch size must be > 0")
        data = load_dataset(config.data)
        images = data["images"]
        if images.shape[-1] != images.shape[-2]:
            raise InterferoError(f"training images must be square, got {images.shape[-2:]}")
        self.data_info = {k: data[k] for k in ("kind", "fov_uas", "units")} | {"n_images": int(images.shape[0])}
        if "law" in data.get("generator", {}):  # the black holes' parameter law, so the set can be regenerated
            self.data_info["law"] = data["generator"]["law"]
        self.image_size, self.channels = int(images.shape[-1]), int(images.shape[1])
        if self.image_size < 4:
            raise InterferoError(f"training images must be at least 4x4 pixels, got {self.image_size}")
        # the U-Net's activations: about 30 feature maps of width x H x W floats per image, kept for backward
        check_memory(4.0 * 30 * config.width * config.num_res_blocks * self.image_size**2 * self.channels
                     * config.batch_size, f"training with --batch-size {config.batch_size}, --width {config.width}"
                     f" and --num-res-blocks {config.num_res_blocks}")
        self.sde = sde_from_config(config.sde)
        self.progress = progress and self.rank == 0
        self.device = torch.device("cpu")
        if self.distributed:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            if not torch.distributed.is_initialized():
                torch.distributed.init_process_group(backend)
        elif torch.cuda.is_available():
            self.device = torch.device("cuda")
        self.transform = None
        ckpt = self._read_pointer() if resume else None
        if ckpt is not None:
            self.transform = ckpt["transform"]
            if ckpt["config"]["data"] != config.data or ckpt["image_size"] != self.image_size:
                raise InterferoError(f"{self.out}: the checkpoint was made for other data ({ckpt['config']['data']})")
        elif init_record is not None:
            if int(init_record["image_size"]) != self.image_size:
                raise InterferoError(f"{config.init}: a prior for {init_record['image_size']} px images cannot"
                                     f" start training on {self.image_size} px images")
            self.transform = init_record["transform"]
        else:
            self.transform = data_transform(images)
        self.z = (torch.from_numpy(images) - self.transform["shift"]) / self.transform["scale"]
        torch.manual_seed(config.seed)
        self.net = UNet(
            image_size=self.image_size, channels=self.channels, width=config.width,
            channel_mult=tuple(config.channel_mult) if config.channel_mult else None,
            num_res_blocks=config.num_res_blocks, dropout=config.dropout, output_norm=config.output_norm,
            global_rank=config.global_rank,
        ).to(self.device)
        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.step = 0
        self.history: list[list[float]] = []
        self.time_sampler = TimeSampler(self.sde, importance=True) if config.likelihood_fraction > 0 else None
        if ckpt is not None:
            self._load(ckpt)
        elif init_net is not None:  # fine-tuning: network and EMA start from the prior's (EMA) weights
            state = init_net.state_dict()
            if init_net.global_linear is None and self.net.global_linear is not None:  # a branch added here
                state |= {k: v for k, v in self.net.state_dict().items() if k.startswith("global_linear.")}
            load_state(self.net, state, str(config.init))
            self.ema.module.load_state_dict(self.net.state_dict())
        self.model = self.net
        if self.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(self.net)

    # --- checkpoints --------------------------------------------------------------------
    def _read_pointer(self) -> dict | None:
        path = self.out / "checkpoint.json"
        fields = {"file": str, "step": int, "config": dict, "transform": dict, "image_size": int, "optimizer": dict}
        record = read_checkpoint_json(path, fields, "checkpoint record")
        if record is not None and "data" not in record["config"]:
            raise InterferoError(f"{path}: corrupted checkpoint record (no data path)")
        return record

    def _load(self, ckpt: dict) -> None:
        path = self.out / ckpt["file"]
        if not path.is_file():
            raise InterferoError(f"{self.out}/checkpoint.json: its tensor file {ckpt['file']} is missing")
        if "sha256" in ckpt and file_sha256(path) != ckpt["sha256"]:
            raise InterferoError(f"{self.out}/checkpoint.json: {ckpt['file']} does not match the record (SHA-256)")
        for pattern in (".ckpt-*", ".checkpoint.json*", ".prior.*"):  # temporary files of an interrupted write
            for p in self.out.glob(pattern):
                p.unlink(missing_ok=True)
        tensors = load_tensors(path)
        load_state(self.net, {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, ckpt["file"])
        load_state(self.ema, {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, ckpt["file"])
        load_optimizer(self.opt, tensors, ckpt["optimizer"])
        self.step = int(ckpt["step"])
        self.history = ckpt.get("history", [])

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        name = f"ckpt-{self.step:08d}.safetensors"
        opt_tensors, opt_meta = optimizer_tensors(self.opt)
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        tensors |= {f"ema.{k}": v for k, v in self.ema.state_dict().items()}
        save_tensors(tensors | opt_tensors, self.out / name)
        record = {
            "file": name, "sha256": file_sha256(self.out / name), "step": self.step, "config": asdict(self.cfg),
            "transform": self.transform,
            "image_size": self.image_size, "optimizer": opt_meta, "history": self.history,
        }
        atomic_write_text(self.out / "checkpoint.json", json.dumps(record))
        old = sorted(self.out.glob("ckpt-*.safetensors"))[: -self.cfg.keep_checkpoints]
        for p in old:
            if p.name != name:
                p.unlink(missing_ok=True)
        self.export()

    def export(self) -> None:
        """Writes the EMA network as the prior file pair ``prior.safetensors`` / ``prior.json``."""
        record = {
            "sde": self.sde.config(),
            "transform": self.transform,
            "image_size": self.image_size,
            "channels": self.channels,
            "fov_uas": self.data_info["fov_uas"],
            "units": self.data_info["units"],
            "training": {
                "steps": self.step, "batch_size": self.cfg.batch_size * self.world, "data": self.data_info,
                "parameters": count_parameters(self.net), "final_loss": self.history[-1][1] if self.history else None,
                "config": asdict(self.cfg),
            },
        }
        write_prior(self.ema.module, record, self.out / "prior")

    # --- loop ---------------------------------------------------------------------------
    def _lr(self) -> float:
        cfg = self.cfg
        if self.step < cfg.warmup:
            return cfg.lr * (self.step + 1) / cfg.warmup
        if cfg.lr_schedule == "cosine":
            frac = (self.step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
            return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(1.0, frac)))
        return cfg.lr

    def train_step(self) -> float:
        g = _step_generator(self.cfg.seed, self.rank, self.step)
        n = self.cfg.batch_size // 2 if self.cfg.antithetic else self.cfg.batch_size
        idx = torch.randint(self.z.shape[0], (n,), generator=g)
        z0 = self.z[idx]
        if self.cfg.augment:
            z0 = _augment(z0, g)
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        loss = dsm_loss(self.model, self.sde, z0, g, self.device, self.cfg.likelihood_fraction,
                        self.time_sampler, self.cfg.image_weight_cap, self.cfg.antithetic).mean()
        if not torch.isfinite(loss):
            raise InterferoError(f"training loss became {loss.item()} at step {self.step}; lower --lr")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.ema.update_parameters(self.net)
        self.step += 1
        value = loss.detach()
        if self.distributed:
            torch.distributed.all_reduce(value)
            value = value / self.world
        return float(value)

    def sample_grid(self, n: int = 16) -> Path | None:
        if self.rank != 0:
            return None
        from interfero.plotting import save_figure

        from .networks import NoisePredictionScore
        from .sampling import reverse_sde

        score = NoisePredictionScore(self.ema.module.eval(), self.sde)
        g = torch.Generator().manual_seed(self.cfg.seed + 7)
        x = self.sde.prior_sampling((n, self.channels, self.image_size, self.image_size), generator=g)
        x = reverse_sde(score, self.sde, x.to(self.device), self.cfg.sample_steps, generator=None)
        self.ema.module.train()
        images = (x.cpu() * self.transform["scale"] + self.transform["shift"]).numpy()[:, 0]
        return save_figure(_grid_figure(images, f"step {self.step}"), self.out / f"samples-{self.step:08d}.png")

    def run(self) -> dict:
        cfg = self.cfg
        start, t0 = self.step, time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.progress, desc="train-prior")
        running = None
        while self.step < cfg.steps:
            loss = self.train_step()
            running = loss if running is None else 0.98 * running + 0.02 * loss
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self.history.append([self.step, running])
                bar.set_postfix(loss=f"{running:.4f}")
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
            if cfg.sample_every and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                self.sample_grid()
            if self.distributed:
                torch.distributed.barrier()
        bar.close()
        elapsed = time.perf_counter() - t0
        return {"steps": self.step, "new_steps": self.step - start, "seconds": elapsed,
                "steps_per_s": (self.step - start) / elapsed if elapsed > 0 else float("nan"),
                "final_loss": running}


def _grid_figure(images: np.ndarray, title: str):
    import matplotlib.pyplot as plt

    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.3))
    for ax in np.atleast_1d(axes).flat:
        ax.axis("off")
    for ax, im in zip(np.atleast_1d(axes).flat, images):
        ax.imshow(im, cmap="afmhot", vmin=0 if im.min() >= 0 else None)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    trainer = Trainer(config, resume=resume, progress=progress)
    try:
        return trainer.run()
    finally:
        if trainer.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
